// The admin page's enhancement: the preview form and the DNS buttons fetch the JSON API
// and update the page in place. Without this script both forms still work (the server
// renders the same result). Values are set as text, never as HTML.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("preview-form");
  if (form) form.addEventListener("submit", previewSubmit);
  for (const f of document.querySelectorAll("form.dns-form")) f.addEventListener("submit", dnsSubmit);
});

async function previewSubmit(ev) {
  ev.preventDefault();
  const form = ev.target;
  const params = new URLSearchParams(new FormData(form));
  const result = document.getElementById("result");
  const errEl = document.getElementById("result-error");
  const dl = document.getElementById("result-decision");
  result.setAttribute("aria-busy", "true");
  try {
    const resp = await fetch("/api/preview?" + params.toString(), { headers: { "Accept": "application/json" } });
    const body = await resp.json();
    if (!resp.ok) {
      errEl.textContent = body.error || ("error " + resp.status);
      errEl.hidden = false;
      dl.hidden = true;
    } else {
      for (const [key, value] of Object.entries(body)) {
        const dd = document.getElementById("r-" + key);
        if (dd) dd.textContent = typeof value === "boolean" ? (value ? "yes" : "no") : value;
      }
      errEl.hidden = true;
      dl.hidden = false;
    }
    history.replaceState(null, "", "/?" + params.toString() + "#result");
  } catch (e) {
    errEl.textContent = "The relay did not answer: " + e;
    errEl.hidden = false;
    dl.hidden = true;
  }
  result.dataset.source = "api";
  result.removeAttribute("aria-busy");
}

async function dnsSubmit(ev) {
  ev.preventDefault();
  const form = ev.target;
  const domain = form.elements["dns"].value;
  const unit = form.elements["dns_unit"] ? form.elements["dns_unit"].value : "";
  const out = document.getElementById("dns-result");
  const params = new URLSearchParams({ domain: domain });
  if (unit) params.set("unit", unit);
  out.replaceChildren(el("p", {}, "Checking " + domain + "…"));
  out.setAttribute("aria-busy", "true");
  try {
    const resp = await fetch("/api/dns?" + params.toString(), { headers: { "Accept": "application/json" } });
    const body = await resp.json();
    out.replaceChildren();
    if (!resp.ok) {
      out.append(el("p", { class: "error", role: "alert" }, domain + ": " + (body.error || resp.status)));
    } else {
      for (const d of body.domains || []) renderDomain(out, d);
      for (const e of body.dns_errors || []) out.append(el("p", { class: "error" }, e.name + " " + e.type + ": " + e.error));
    }
  } catch (e) {
    out.replaceChildren(el("p", { class: "error", role: "alert" }, "The relay did not answer: " + e));
  }
  out.removeAttribute("aria-busy");
}

function renderDomain(out, d) {
  out.append(el("h3", {}, d.domain + (d.unit ? " (unit " + d.unit + ")" : "")));
  out.append(el("p", { class: "status status-" + d.status }, d.verdict));
  if (d.findings && d.findings.length) {
    const ul = el("ul", {});
    for (const f of d.findings) {
      const li = el("li", {});
      li.append(el("strong", {}, f.severity), " (" + f.area + "): " + f.text);
      ul.append(li);
    }
    out.append(ul);
  }
  if (d.publish && d.publish.length) {
    out.append(el("p", {}, "Publish:"));
    const ol = el("ol", {});
    for (const p of d.publish) {
      const li = el("li", {}, p.kind + ": " + p.why);
      li.append(el("pre", {}, p.zone));
      ol.append(li);
    }
    out.append(ol);
  }
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
