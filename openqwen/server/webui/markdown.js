// A small Markdown renderer and code highlighter for chat replies: no dependencies, no build step.
// Everything is HTML-escaped first, so model output can never inject markup. Covers what chat
// models write: fenced code, inline code, headings, lists, quotes, tables, emphasis, links, rules.
"use strict";

const Markdown = (() => {
  const escapeHtml = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

  const KEYWORDS = new Set((
    "and as assert async await break case catch class const continue def default del do elif else enum except export extends " +
    "final finally fn for from func function go if impl import in interface is lambda let loop match mod module mut namespace new " +
    "nonlocal not or package pass private protected pub public raise return self static struct super switch this throw try type " +
    "typeof use var void where while with yield int float double char bool boolean string str long short unsigned signed auto " +
    "include define template typename virtual override using select from where insert update delete create table"
  ).split(" "));
  const LITERALS = new Set("true false null None True False nil undefined NaN".split(" "));
  // One pass: comments, strings, numbers, words; everything else copied through.
  const TOKEN = /(\/\/[^\n]*|#[^\n]*|\/\*[\s\S]*?\*\/|--[^\n]*)|("""[\s\S]*?"""|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)|(\b\d[\d_]*(?:\.\d+)?(?:e[+-]?\d+)?\b|\b0x[0-9a-f]+\b)|([A-Za-z_][A-Za-z0-9_]*)/gi;

  function highlight(code, lang) {
    const hashComments = /^(py|python|sh|bash|shell|zsh|rb|ruby|r|yaml|yml|toml|perl|pl|make|makefile|dockerfile|conf)$/i.test(lang || "");
    const dashComments = /^(sql|lua|haskell|hs)$/i.test(lang || "");
    let out = "", last = 0, m;
    TOKEN.lastIndex = 0;
    while ((m = TOKEN.exec(code)) !== null) {
      out += escapeHtml(code.slice(last, m.index));
      last = TOKEN.lastIndex;
      const [text, comment, str, num, word] = m;
      let cls = null;
      if (comment !== undefined) {
        const isHash = comment.startsWith("#"), isDash = comment.startsWith("--");
        if ((isHash && !hashComments) || (isDash && !dashComments)) {
          // not a comment in this language: emit the first character and rescan after it
          out += escapeHtml(text[0]);
          TOKEN.lastIndex = last = m.index + 1;
          continue;
        }
        cls = "tok-com";
      } else if (str !== undefined) cls = "tok-str";
      else if (num !== undefined) cls = "tok-num";
      else if (word !== undefined) cls = KEYWORDS.has(word) ? "tok-kw" : LITERALS.has(word) ? "tok-lit" : /^\s*\(/.test(code.slice(last)) ? "tok-fn" : null;
      out += cls ? `<span class="${cls}">${escapeHtml(text)}</span>` : escapeHtml(text);
    }
    return out + escapeHtml(code.slice(last));
  }

  function inline(text) {
    // Code spans first, kept aside so emphasis rules do not touch them.
    const codes = [];
    let s = text.replace(/`([^`\n]+)`/g, (_, c) => { codes.push(c); return `\u0000${codes.length - 1}\u0000`; });
    s = escapeHtml(s);
    s = s.replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, (_, t, u) => `<a href="${u}" target="_blank" rel="noopener noreferrer">${t}</a>`);
    s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>").replace(/__([^_\n]+)__/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<em>$2</em>").replace(/(^|\W)_([^_\n]+)_(?=\W|$)/g, "$1<em>$2</em>");
    s = s.replace(/~~([^~\n]+)~~/g, "<del>$1</del>");
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${escapeHtml(codes[+i])}</code>`);
  }

  function table(rows) {
    const cells = (row) => row.trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
    const head = cells(rows[0]).map((c) => `<th>${inline(c)}</th>`).join("");
    const body = rows.slice(2).map((r) => `<tr>${cells(r).map((c) => `<td>${inline(c)}</td>`).join("")}</tr>`).join("");
    return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
  }

  function render(src) {
    const lines = src.replace(/\r\n?/g, "\n").split("\n");
    const html = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(/^\s*(```+|~~~+)\s*([\w+#.-]*)/);
      if (fence) {
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
        i++; // closing fence (or end of a still-streaming reply)
        const lang = fence[2] || "";
        html.push(`<div class="codeblock">${lang ? `<span class="lang">${escapeHtml(lang)}</span>` : ""}` +
          `<button type="button" class="copy">copy</button><pre><code>${highlight(body.join("\n"), lang)}</code></pre></div>`);
        continue;
      }
      if (/^\s*$/.test(line)) { i++; continue; }
      const heading = line.match(/^(#{1,6})\s+(.*)$/);
      if (heading) { html.push(`<h${heading[1].length}>${inline(heading[2])}</h${heading[1].length}>`); i++; continue; }
      if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { html.push("<hr>"); i++; continue; }
      if (line.includes("|") && i + 1 < lines.length && /^\s*\|?\s*:?-{3,}/.test(lines[i + 1])) {
        const rows = [];
        while (i < lines.length && lines[i].includes("|")) rows.push(lines[i++]);
        html.push(table(rows));
        continue;
      }
      if (/^\s*>/.test(line)) {
        const quote = [];
        while (i < lines.length && /^\s*>/.test(lines[i])) quote.push(lines[i++].replace(/^\s*>\s?/, ""));
        html.push(`<blockquote>${render(quote.join("\n"))}</blockquote>`);
        continue;
      }
      const item = line.match(/^(\s*)([-*+]|\d+[.)])\s+(.*)$/);
      if (item) {
        const ordered = /\d/.test(item[2]);
        const items = [];
        while (i < lines.length) {
          const m = lines[i].match(/^(\s*)([-*+]|\d+[.)])\s+(.*)$/);
          if (m) { items.push(m[3]); i++; }
          else if (/^\s{2,}\S/.test(lines[i]) && items.length) { items[items.length - 1] += " " + lines[i].trim(); i++; }
          else break;
        }
        const tag = ordered ? "ol" : "ul";
        html.push(`<${tag}>${items.map((t) => `<li>${inline(t)}</li>`).join("")}</${tag}>`);
        continue;
      }
      const para = [];
      while (i < lines.length && lines[i].trim() && !/^\s*(```|~~~|#{1,6}\s|>|[-*+]\s|\d+[.)]\s)/.test(lines[i])) para.push(lines[i++]);
      if (!para.length) para.push(lines[i++]);
      html.push(`<p>${para.map(inline).join("<br>")}</p>`);
    }
    return html.join("\n");
  }

  return { render, highlight, escapeHtml };
})();
