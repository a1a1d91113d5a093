"""The gallery page's inline CSS and script (`gallery_html` puts the cards between them).

The script reads only the page's own markup: no user text is ever placed inside it.
"""

PAGE_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#f3f4f6;color:#111}
body>header{padding:12px 20px;background:#1f2937;color:#fff}
body>header h1{margin:0;font-size:18px;word-break:break-all}
.summary{background:#fff;padding:10px 20px;border-bottom:1px solid #ddd}
.stats{display:flex;flex-wrap:wrap;gap:4px 28px;margin:0 0 8px}
.stats dt{color:#666;font-size:12px}.stats dd{margin:0;font-size:18px;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.plot{margin:0;flex:1 1 480px;max-width:760px}.plot svg{width:100%;height:auto;display:block}
.plot figcaption{font-size:11px;color:#666}
.stages{border-collapse:collapse;font-size:12px}
.stages th,.stages td{padding:2px 8px;text-align:right;border-bottom:1px solid #eee}
.stages th:first-child,.stages td:first-child{text-align:left}
.stages i{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}
.filters{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:6px 14px;
align-items:center;padding:8px 20px;background:#fff;border-bottom:1px solid #ddd}
.filters label{color:#555;font-weight:600}
.filters select,.filters input{font:inherit;padding:2px 4px}
.filters input{min-width:220px}
#shown{margin-left:auto;color:#555}
main{display:flex;flex-wrap:wrap;gap:18px 28px;align-items:flex-start;padding:12px 20px}
.group{max-width:100%}.group.flat{width:100%}
.group-head{width:0;min-width:100%}
.group-head h2{margin:0;font-size:16px;white-space:pre-wrap;word-break:break-word;
display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;overflow:hidden}
.group-head p{margin:0 0 6px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:260px;background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;
overflow:hidden;content-visibility:auto;contain-intrinsic-size:260px 380px}
.card.failed{border-top:4px solid #dc2626}.card.done{border-top:4px solid #16a34a}
.media{position:relative;aspect-ratio:16/10;background:#1f2937}
.media video{display:block;width:100%;height:100%;object-fit:contain;background:#111}
.no-video{display:flex;align-items:center;justify-content:center;color:#fca5a5;font-weight:600}
.variant{position:absolute;z-index:1;top:6px;left:6px;background:#000a;color:#fff;
border-radius:6px;padding:1px 7px;font-size:12px;font-weight:400;pointer-events:none}
.text{padding:8px 12px}
.title{margin:0;font-size:14px;white-space:pre-wrap;word-break:break-word;cursor:pointer;
display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden}
.title.open{display:block}
.subtitle{margin:2px 0 6px;font-size:12px;color:#555;word-break:break-all}
.badge{font-size:11px;color:#555;border:1px solid #ccc;border-radius:8px;padding:0 6px}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:0;font-size:12px}
dt{color:#666}dd{margin:0;word-break:break-word}
.inputs{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}
.inputs figure{margin:0;width:96px;font-size:10px;color:#666;word-break:break-all}
.inputs img,.no-thumb{width:96px;height:64px;object-fit:cover;background:#ddd;display:block}
.error{color:#b91c1c;margin:8px 0 2px;word-break:break-word}
.muted{color:#666;margin:0;font-size:12px}
.empty{color:#555}
pre{white-space:pre-wrap;font-size:11px;max-height:200px;overflow:auto;background:#f9fafb}
[hidden]{display:none!important}
</style></head>
<body data-grouping="__GROUPING__" data-media-done="0"><header><h1>__TITLE__</h1></header>
"""

# Filters: every <select data-facet> matches a card attribute; the search box matches every
# word against the card's title and id. The state lives in the URL fragment (#status=failed&q=
# cat). Media: an IntersectionObserver mounts a card's <video> near the viewport and removes it
# when the card leaves. For headless checks, <body> carries data-shown (visible cards),
# data-media-mounted (videos in the page), data-media-total/-loaded/-errors (media asked for,
# loaded, failed), data-media-error-codes and data-media-done="1" once all asked for settled.
PAGE_TAIL = """<script>
(() => {
  "use strict";
  const body = document.body;
  const cards = Array.from(document.querySelectorAll("article.card"));
  const groups = Array.from(document.querySelectorAll("section.group"));
  const selects = Array.from(document.querySelectorAll("select[data-facet]"));
  const search = document.getElementById("search");
  const shown = document.getElementById("shown");
  const texts = cards.map((c) =>
    (c.querySelector(".title").textContent + " " + c.dataset.id).toLowerCase());

  function apply() {
    const wanted = selects.filter((s) => s.value !== "").map((s) => [s.dataset.attr, s.value]);
    const words = search.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let n = 0;
    cards.forEach((card, i) => {
      const ok = wanted.every(([attr, value]) => card.getAttribute(attr) === value) &&
        words.every((w) => texts[i].includes(w));
      card.hidden = !ok;
      if (ok) n++;
    });
    groups.forEach((g) => { g.hidden = !g.querySelector("article.card:not([hidden])"); });
    shown.textContent = n + " of " + cards.length + " shown";
    body.dataset.shown = n;
  }
  function writeHash() {
    const params = new URLSearchParams();
    selects.forEach((s) => { if (s.value) params.set(s.dataset.facet, s.value); });
    if (search.value) params.set("q", search.value);
    const here = location.pathname + location.search;
    history.replaceState(null, "", params.toString() ? "#" + params : here);
  }
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    selects.forEach((s) => { s.value = params.get(s.dataset.facet) || ""; });
    search.value = params.get("q") || "";
    apply();
  }
  selects.forEach((s) => s.addEventListener("change", () => { apply(); writeHash(); }));
  search.addEventListener("input", () => { apply(); writeHash(); });
  window.addEventListener("hashchange", readHash);
  document.querySelectorAll(".title").forEach((t) =>
    t.addEventListener("click", () => t.classList.toggle("open")));

  let total = 0, loaded = 0, errors = 0, observed = false;
  const codes = [], cancels = new WeakMap();
  function report() {
    body.dataset.mediaTotal = total;
    body.dataset.mediaLoaded = loaded;
    body.dataset.mediaErrors = errors;
    body.dataset.mediaErrorCodes = codes.join(" ");
    body.dataset.mediaMounted = document.querySelectorAll(".media video").length;
    body.dataset.mediaDone = observed && loaded + errors === total ? "1" : "0";
  }
  function watch(el, okEvent, label) {
    let settled = false;
    total++;
    const end = (ok) => {
      if (settled) return;
      settled = true;
      if (ok) loaded++;
      else { errors++; codes.push(label + ":" + (el.error ? el.error.code : 0)); }
      report();
    };
    el.addEventListener(okEvent, () => end(true));
    el.addEventListener("error", () => end(false));
    return () => { if (!settled) { settled = true; total--; report(); } };
  }
  function mount(card) {
    card.querySelectorAll("img[data-src]:not([src])").forEach((img) => {
      watch(img, "load", "img:" + card.dataset.id);
      img.src = img.dataset.src;
    });
    const media = card.querySelector(".media[data-src]");
    if (!media || media.querySelector("video")) return;
    const video = document.createElement("video");
    Object.assign(video, {controls: true, muted: true, loop: true, playsInline: true});
    video.preload = "metadata";
    if (media.dataset.poster) video.poster = media.dataset.poster;
    video.dataset.id = card.dataset.id;
    cancels.set(video, watch(video, "loadeddata", "video:" + card.dataset.id));
    video.src = media.dataset.src;
    media.appendChild(video);
  }
  function unmount(card) {
    const video = card.querySelector(".media video");
    if (!video) return;
    cancels.get(video)();
    video.pause();
    video.removeAttribute("src");
    video.load();
    video.remove();
    report();
  }
  cards.forEach((card) => {
    card.addEventListener("mouseenter", () => {
      const v = card.querySelector("video");
      if (v) v.play().catch(() => {});
    });
    card.addEventListener("mouseleave", () => {
      const v = card.querySelector("video");
      if (v) v.pause();
    });
  });
  const lazy = new IntersectionObserver((entries) => {
    entries.forEach((e) => (e.isIntersecting ? mount(e.target) : unmount(e.target)));
    observed = true;
    report();
  }, {rootMargin: "150px 0px"});
  cards.forEach((card) => lazy.observe(card));
  readHash();
  report();
})();
</script>
</body></html>
"""
