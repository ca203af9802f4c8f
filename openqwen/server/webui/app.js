// The chat page: keeps the conversation, streams replies from /v1/chat/completions (SSE),
// renders reasoning in a collapsible block and the answer as Markdown, and shows tokens/s.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], model: null, controller: null };
const SETTINGS = ["system", "thinking", "temperature", "top-p", "max-tokens", "api-key"];

function loadSettings() {
  const saved = JSON.parse(localStorage.getItem("openqwen-settings") || "{}");
  for (const id of SETTINGS) {
    if (!(id in saved)) continue;
    const el = $(id);
    if (el.type === "checkbox") el.checked = saved[id]; else el.value = saved[id];
  }
  for (const id of ["temperature", "top-p"]) $(`${id}-value`).textContent = $(id).value;
}

function saveSettings() {
  const saved = {};
  for (const id of SETTINGS) { const el = $(id); saved[id] = el.type === "checkbox" ? el.checked : el.value; }
  localStorage.setItem("openqwen-settings", JSON.stringify(saved));
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    state.model = body.data[0].id;
    $("model-name").textContent = `${state.model} · context ${body.data[0].max_model_len}`;
  } catch (e) {
    $("model-name").textContent = `cannot list models: ${e.message}`;
  }
}

function addMessage(role, text) {
  $("empty")?.remove();
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.innerHTML = `<div class="role">${role === "user" ? "You" : role === "error" ? "Error" : "Assistant"}</div>`;
  if (role === "assistant") {
    div.innerHTML += `<details class="thinking" hidden open><summary>Thinking…</summary><div class="body"></div></details>` +
      `<div class="content cursor"></div><div class="stats"></div>`;
  } else {
    const body = document.createElement("div");
    body.textContent = text;
    div.appendChild(body);
  }
  $("messages").appendChild(div);
  scrollDown();
  return div;
}

function scrollDown() { const m = $("messages"); m.scrollTop = m.scrollHeight; }

// Parses an SSE byte stream into JSON payloads ("data: {...}" events; "[DONE]" ends it).
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function send(text) {
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const view = addMessage("assistant");
  const thinking = view.querySelector("details.thinking"), content = view.querySelector(".content"), stats = view.querySelector(".stats");
  const messages = [];
  if ($("system").value.trim()) messages.push({ role: "system", content: $("system").value.trim() });
  messages.push(...state.history);
  const body = {
    model: state.model, messages, stream: true, stream_options: { include_usage: true },
    temperature: parseFloat($("temperature").value), top_p: parseFloat($("top-p").value),
    max_tokens: parseInt($("max-tokens").value, 10) || 1024,
    chat_template_kwargs: { enable_thinking: $("thinking").checked },
  };
  state.controller = new AbortController();
  setBusy(true);
  let reasoning = "", answer = "", pieces = 0, firstAt = null, answerAt = null, usage = null, finish = null, pending = false, suffix = "";
  const started = performance.now();
  const paint = () => {
    pending = false;
    if (reasoning) { thinking.hidden = false; thinking.querySelector(".body").textContent = reasoning; }
    content.innerHTML = Markdown.render(answer);
    const seconds = firstAt ? (performance.now() - firstAt) / 1000 : 0;
    const tokens = usage ? usage.completion_tokens : pieces;
    stats.textContent = (seconds > 0 ? `${tokens} tokens · ${(tokens / seconds).toFixed(1)} tokens/s` : "waiting for the first token…") + suffix;
    scrollDown();
  };
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : `${r.status} ${r.statusText}`);
    }
    for await (const chunk of sseEvents(r)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const d = choice.delta || {};
        if (d.reasoning_content) { reasoning += d.reasoning_content; pieces++; }
        if (d.content) { answer += d.content; pieces++; answerAt = answerAt || performance.now(); }
        if (choice.finish_reason) finish = choice.finish_reason;
        if ((d.reasoning_content || d.content) && !firstAt) firstAt = performance.now();
      }
      if (!pending) { pending = true; requestAnimationFrame(paint); }
    }
  } catch (e) {
    if (e.name !== "AbortError") { addMessage("error", e.message); }
    else finish = "stopped";
  } finally {
    if (finish) suffix = ` · ${finish}` + (firstAt ? ` · first token after ${((firstAt - started) / 1000).toFixed(2)} s` : "");
    paint();  // a frame still pending paints the same text
    content.classList.remove("cursor");
    if (reasoning) { thinking.open = false; thinking.querySelector("summary").textContent = `Thought for ${(((answerAt || performance.now()) - firstAt) / 1000).toFixed(1)} s`; }
    if (answer || reasoning) state.history.push({ role: "assistant", content: answer });
    else state.history.pop();
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("status").textContent = busy ? "generating…" : "";
  if (!busy) state.controller = null;
}

document.addEventListener("click", (e) => {
  if (!e.target.matches("button.copy")) return;
  navigator.clipboard?.writeText(e.target.parentElement.querySelector("code").innerText);
  e.target.textContent = "copied";
  setTimeout(() => { e.target.textContent = "copy"; }, 1200);
});

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => state.controller?.abort());
$("new-chat").addEventListener("click", () => {
  state.controller?.abort();
  state.history = [];
  $("messages").innerHTML = '<div class="empty" id="empty">New conversation.</div>';
});
for (const id of SETTINGS) $(id).addEventListener("change", saveSettings);
for (const id of ["temperature", "top-p"]) $(id).addEventListener("input", () => { $(`${id}-value`).textContent = $(id).value; });
$("api-key").addEventListener("change", loadModel);

loadSettings();
loadModel();
