// Shipyard's web view: follows job logs while they grow, and filters a log's lines.
// No inline script (the pages' Content-Security-Policy allows only this file).
"use strict";

function follow(pre) {
  let after = 0;
  const url = pre.dataset.follow;
  async function more() {
    let again = true;
    let wait = 250;
    try {
      const answer = await fetch(url + "?after=" + after, { credentials: "same-origin" });
      if (!answer.ok) return;
      const data = await answer.json();
      if (data.skipped) {
        const mb = (data.skipped / 1048576).toFixed(1);
        pre.append(document.createTextNode("[… " + mb + " MB before this not shown: download the whole log]\n"));
      }
      if (data.text) {
        pre.append(document.createTextNode(data.text)); // text, never HTML
        pre.dispatchEvent(new Event("grew"));
      }
      after = data.after;
      again = data.more;
      if (data.full) wait = 0;
    } catch (e) {
      again = true; // (the server restarting: try again)
    }
    if (again) setTimeout(more, wait);
  }
  more();
}

function search(input) {
  const pre = document.getElementById(input.dataset.log);
  const all = () => pre.dataset.all ?? pre.textContent;
  function apply() {
    const word = input.value.toLowerCase();
    if (!word) {
      if (pre.dataset.all !== undefined) { pre.textContent = pre.dataset.all; delete pre.dataset.all; }
      return;
    }
    const text = all();
    pre.dataset.all = text;
    pre.textContent = text.split("\n").filter((l) => l.toLowerCase().includes(word)).join("\n");
  }
  input.addEventListener("input", apply);
  pre.addEventListener("grew", () => { if (input.value) { delete pre.dataset.all; apply(); } });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("pre[data-follow]").forEach(follow);
  document.querySelectorAll("input.log-search").forEach(search);
});
