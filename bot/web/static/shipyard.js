// Shipyard's web view: follows job logs as they grow (Server-Sent Events), and filters a log's
// lines. No inline script (the pages' Content-Security-Policy allows only this file).
"use strict";

function show(pre, text) {
  pre.full += text;
  if (pre.filtering) pre.dispatchEvent(new Event("grew"));
  else pre.append(document.createTextNode(text)); // text, never HTML
}

function follow(pre) {
  pre.full = "";
  const stream = new EventSource(pre.dataset.follow);
  stream.addEventListener("skipped", (e) => {
    const mb = (Number(e.data) / 1048576).toFixed(1);
    show(pre, "[… " + mb + " MB before this not shown: download the whole log]\n");
  });
  stream.addEventListener("text", (e) => show(pre, JSON.parse(e.data)));
  stream.addEventListener("end", () => stream.close());
}

function search(input) {
  const pre = document.getElementById(input.dataset.log);
  function apply() {
    const word = input.value.toLowerCase();
    pre.filtering = word !== "";
    const full = pre.full ?? "";
    pre.textContent = word ? full.split("\n").filter((l) => l.toLowerCase().includes(word)).join("\n") : full;
  }
  input.addEventListener("input", apply);
  pre.addEventListener("grew", apply);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("pre[data-follow]").forEach(follow);
  document.querySelectorAll("input.log-search").forEach(search);
});
