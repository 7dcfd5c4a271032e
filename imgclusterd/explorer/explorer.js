// imgclusterd explorer: the clusters of every algorithm at every threshold, computed here from
// each algorithm's minimum spanning forest (explorer-data.js). Plain JavaScript, no build step.
//
// Clusters at threshold t are the components of the forest's edges with weight <= t (single
// linkage), numbered as in the tree: largest first, ties by the smallest path (photos come
// sorted by path, so by the smallest photo index). Names are shown with textContent only.
"use strict";

(function () {
  const DATA = window.IMGCLUSTERD_DATA;
  const CHUNK = 60; // thumbnails rendered when a row scrolls into view
  const MORE = 240; // thumbnails added per "more" step
  const ROWS = 200; // cluster rows built before the first paint; the rest follow in chunks
  const ROWS_CHUNK = 300; // cluster rows built per background task (~10 ms)
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const NONE = 65535;

  const ui = {
    algorithm: $("algorithm"), threshold: $("threshold"), value: $("threshold-value"),
    filter: $("filter"), chart: $("chart"), summary: $("summary"), clusters: $("clusters"),
    unclustered: $("unclustered"), nClusters: $("n-clusters"), nClustered: $("n-clustered"),
    nLargest: $("n-largest"),
  };
  // Timings a benchmark reads; nothing in the page depends on them.
  const timings = (window.imgclusterdExplorer = { renders: 0, lastRenderMs: 0, readyMs: 0 });

  if (!DATA || !Array.isArray(DATA.algorithms)) {
    ui.summary.textContent = "explorer-data.js is missing or damaged: see the tree beside this page.";
    document.documentElement.dataset.ready = "error";
    return;
  }

  const names = DATA.names;
  const N = names.length;
  const flat = new Uint8Array(N);
  for (const i of DATA.flat || []) flat[i] = 1;
  const algorithms = DATA.algorithms;
  const byName = new Map(algorithms.map((a) => [a.name, a]));
  const state = { algo: algorithms[0] || null, index: 0, filter: "", view: null };

  // ------------------------------------------------------------------ data

  function decode(b64) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(b64);
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // Union-find over all photo indices; reused between renders (no allocation per slider move).
  const parent = new Int32Array(N);
  const size = new Int32Array(N);
  function find(x) {
    while (parent[x] !== x) { parent[x] = parent[parent[x]]; x = parent[x]; }
    return x;
  }
  function union(a, b) {
    a = find(a); b = find(b);
    if (a === b) return 0;
    if (size[a] < size[b]) { const t = a; a = b; b = t; }
    parent[b] = a; size[a] += size[b];
    return a;
  }
  function resetSets() {
    for (let i = 0; i < N; i++) { parent[i] = i; size[i] = 1; }
  }

  function prepare(alg) {
    if (alg.u) return alg;
    const E = alg.edgeCount;
    let bytes = decode(alg.edges);
    if (bytes.byteOffset !== 0) bytes = bytes.slice();
    alg.u = new Uint32Array(bytes.buffer, 0, E);
    alg.v = new Uint32Array(bytes.buffer, 4 * E, E);
    alg.w = new Uint16Array(bytes.buffer, 8 * E, E);
    alg.present = new Uint8Array(N);
    if (alg.members !== undefined) {
      const m = decode(alg.members);
      const members = new Uint32Array(m.slice().buffer);
      for (const i of members) alg.present[i] = 1;
      alg.count = members.length;
    } else {
      alg.present.fill(1);
      alg.count = N;
    }
    // A photo's nearest neighbour is at the weight of its lightest forest edge (cut property);
    // for a clustered photo that neighbour is in its cluster.
    alg.nearest = new Uint16Array(N).fill(NONE);
    for (let e = 0; e < E; e++) {
      const w = alg.w[e];
      if (w < alg.nearest[alg.u[e]]) alg.nearest[alg.u[e]] = w;
      if (w < alg.nearest[alg.v[e]]) alg.nearest[alg.v[e]] = w;
    }
    // Edges are sorted by weight: threshold k uses the prefix [0, prefix[k]).
    alg.prefix = alg.thresholds.map((t) => {
      let lo = 0, hi = E;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (alg.w[mid] <= t) lo = mid + 1; else hi = mid; }
      return lo;
    });
    // The sweep: clusters, photos in clusters, largest cluster at every threshold, one pass.
    resetSets();
    alg.sweep = [];
    let clusters = 0, clustered = 0, largest = 0, e = 0;
    for (const end of alg.prefix) {
      for (; e < end; e++) {
        const a = find(alg.u[e]), b = find(alg.v[e]);
        if (a === b) continue;
        const sa = size[a], sb = size[b];
        if (sa === 1 && sb === 1) { clusters++; clustered += 2; }
        else if (sa === 1 || sb === 1) clustered++;
        else clusters--;
        largest = Math.max(largest, sa + sb);
        union(a, b);
      }
      alg.sweep.push([clusters, clustered, largest]);
    }
    alg.views = new Map();
    return alg;
  }

  // The partition at threshold index k: clusters in tree order, members ascending (path order).
  function partition(alg, k) {
    const cached = alg.views.get(k);
    if (cached) return cached;
    resetSets();
    const end = alg.prefix[k];
    for (let e = 0; e < end; e++) union(alg.u[e], alg.v[e]);
    const id = new Int32Array(N).fill(-1);
    const sizes = [];
    const unclustered = [];
    for (let i = 0; i < N; i++) {
      if (!alg.present[i]) continue;
      const r = find(i);
      if (size[r] < 2) { unclustered.push(i); continue; }
      if (id[r] < 0) { id[r] = sizes.length; sizes.push(size[r]); }
    }
    // Cluster ids follow their smallest member's index, so a stable sort by size is the tree's
    // order (size descending, ties by the smallest path).
    const order = sizes.map((_, c) => c).sort((a, b) => sizes[b] - sizes[a] || a - b);
    const start = new Int32Array(sizes.length + 1);
    const slot = new Int32Array(sizes.length);
    order.forEach((c, rank) => { slot[c] = rank; });
    for (let rank = 0; rank < order.length; rank++) start[rank + 1] = start[rank] + sizes[order[rank]];
    const members = new Int32Array(start[order.length]);
    const fill = start.slice(0, order.length);
    for (let i = 0; i < N; i++) {
      if (!alg.present[i]) continue;
      const r = find(i);
      if (id[r] >= 0) members[fill[slot[id[r]]]++] = i;
    }
    const view = { k, start, members, count: order.length, unclustered };
    if (alg.views.size > 8) alg.views.clear();
    alg.views.set(k, view);
    return view;
  }

  // ------------------------------------------------------------------ links

  // Names made only of URL-safe characters are their own URL; the others carry one in urls.
  function photoUrl(i) {
    const url = DATA.urls[i];
    return DATA.photoRoot + (url !== undefined ? url : names[i]);
  }
  function thumbUrl(i) {
    return DATA.thumbs && DATA.thumbs[i] ? DATA.thumbRoot + DATA.thumbs[i] : null;
  }
  const pad = (n) => String(n).padStart(3, "0");
  function folderHref(alg, t, view, rank) {
    // The cluster's folder in the tree beside this page (relative: works wherever it is opened).
    const base = `${alg.name}/thr_${pad(t)}_unclustered_${view.unclustered.length}/`;
    return rank === null ? `${base}unclustered_${view.unclustered.length}/`
      : `${base}${pad(rank + 1)}_${view.start[rank + 1] - view.start[rank]}/`;
  }

  // ------------------------------------------------------------------ rendering

  function thumb(alg, i, clustered, match) {
    const a = document.createElement("a");
    a.className = "thumb";
    if (match) a.classList.add("match");
    if (flat[i]) a.classList.add("flat");
    a.href = photoUrl(i);
    a.dataset.photo = String(i);
    const d = alg.nearest[i];
    const distance = clustered && d !== NONE ? `distance to nearest member: ${d}` : "unclustered";
    a.title = `${names[i]}\n${distance}${flat[i] ? "\nnear-constant (flat) image" : ""}`;
    const src = thumbUrl(i);
    if (src) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = "";
      img.src = src;
      a.append(img);
    } else {
      const ph = document.createElement("span");
      ph.className = "placeholder";
      ph.textContent = names[i].slice(names[i].lastIndexOf("/") + 1); // no thumbnail (yet)
      a.append(ph);
    }
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = `${names[i].slice(names[i].lastIndexOf("/") + 1)} · ${clustered && d !== NONE ? "d " + d : "alone"}`;
    a.append(caption);
    return a;
  }

  // Rows are empty shells until they come near the viewport; then CHUNK thumbnails, and MORE
  // each time the row's "more" button is reached or clicked. A 20,000-photo cluster costs a
  // few hundred elements until someone scrolls through it.
  const rows = new WeakMap(); // row element -> {list, clustered, done}
  function addThumbs(row, count) {
    const info = rows.get(row);
    const box = row.querySelector(".thumbs");
    const old = box.querySelector(".more");
    if (old) { moreObserver.unobserve(old); old.remove(); }
    const frag = document.createDocumentFragment();
    const end = Math.min(info.list.length, info.done + count);
    const alg = state.algo;
    for (let j = info.done; j < end; j++) {
      const i = info.list[j];
      frag.append(thumb(alg, i, info.clustered, state.filter !== "" && matches(i)));
    }
    info.done = end;
    if (end < info.list.length) {
      const more = document.createElement("button");
      more.type = "button";
      more.className = "more";
      more.textContent = `${info.list.length - end} more`;
      more.addEventListener("click", () => addThumbs(row, MORE));
      frag.append(more);
      moreObserver.observe(more);
    }
    box.append(frag);
  }
  const rowObserver = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      rowObserver.unobserve(entry.target);
      addThumbs(entry.target, CHUNK);
    }
  }, { rootMargin: "400px 0px" });
  const moreObserver = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) addThumbs(entry.target.closest(".cluster, .unclustered"), MORE);
    }
  }, { rootMargin: "200px 0px" });

  let needle = "";
  let lowered = null; // names in lower case, made on the first filter
  function matches(i) { return lowered[i].includes(needle); }

  // One row: <section><h2><a>#001</a> <span class=size>5 photos</span></h2><div class=thumbs>.
  // Cloned from a template: thousands of rows are built per slider move.
  const template = document.createElement("section");
  {
    const h = document.createElement("h2");
    const size = document.createElement("span");
    size.className = "size";
    h.append(document.createElement("a"), " ", size);
    const box = document.createElement("div");
    box.className = "thumbs";
    template.append(h, box);
  }
  function row(kind, list, clustered, heading, href, sizeText) {
    const section = template.cloneNode(true);
    section.className = kind;
    const link = section.firstChild.firstChild;
    link.href = href;
    link.textContent = heading;
    section.firstChild.lastChild.textContent = sizeText;
    rows.set(section, { list, clustered, done: 0 });
    rowObserver.observe(section);
    return section;
  }

  let renderCount = 0;
  let pendingRows = 0;
  function render() {
    const started = performance.now();
    const alg = state.algo;
    rowObserver.disconnect();
    moreObserver.disconnect();
    if (!alg) {
      ui.summary.textContent = "No algorithms configured.";
      return;
    }
    const k = state.index;
    const t = alg.thresholds[k];
    ui.threshold.value = String(k);
    ui.value.textContent = String(t);
    const view = partition(alg, k);
    needle = state.filter.toLowerCase();
    if (needle !== "" && lowered === null) lowered = names.map((n) => n.toLowerCase());
    const shown = [];
    for (let rank = 0; rank < view.count; rank++) {
      if (needle === "" || view.members.subarray(view.start[rank], view.start[rank + 1]).some(matches)) {
        shown.push(rank);
      }
    }
    const build = (from, to) => {
      const frag = document.createDocumentFragment();
      for (let j = from; j < to; j++) {
        const rank = shown[j];
        let list = view.members.subarray(view.start[rank], view.start[rank + 1]);
        // Filtering: the matching photos first, so they are among the thumbnails shown even
        // in a cluster of thousands.
        if (needle !== "") list = Int32Array.from([...list.filter(matches), ...list.filter((i) => !matches(i))]);
        const section = row("cluster", list, true, `#${pad(rank + 1)}`,
          folderHref(alg, t, view, rank), `${list.length} photos`);
        section.dataset.clusterSize = String(list.length);
        section.dataset.cluster = String(rank + 1);
        frag.append(section);
      }
      return frag;
    };
    // The first rows now, the others in background chunks (a threshold with thousands of
    // clusters must not hold the slider); #clusters[data-complete] says when all are there.
    const mine = ++renderCount;
    clearTimeout(pendingRows);
    let next = Math.min(ROWS, shown.length);
    ui.clusters.replaceChildren(build(0, next));
    ui.clusters.dataset.complete = String(next === shown.length);
    const moreRows = () => {
      if (mine !== renderCount) return;
      const end = Math.min(shown.length, next + ROWS_CHUNK);
      ui.clusters.append(build(next, end));
      next = end;
      if (next < shown.length) pendingRows = setTimeout(moreRows, 0);
      else ui.clusters.dataset.complete = "true";
    };
    // After the next frame: the rows on screen are painted before the background work starts.
    if (next < shown.length) requestAnimationFrame(() => { pendingRows = setTimeout(moreRows, 0); });
    const alone = needle === "" ? view.unclustered : view.unclustered.filter(matches);
    ui.unclustered.replaceChildren();
    if (alone.length) {
      ui.unclustered.append(row("unclustered", alone, false, "unclustered",
        folderHref(alg, t, view, null), `${alone.length} photos`));
    }
    const [nc, nin, big] = alg.sweep[k] || [0, 0, 0];
    ui.nClusters.textContent = String(nc);
    ui.nClustered.textContent = String(nin);
    ui.nLargest.textContent = String(big);
    let text = `${alg.name}, threshold ${t}: ${view.count} clusters, ` +
      `${view.unclustered.length} unclustered, ${alg.count} photos.`;
    if (needle !== "") text += ` Filter "${state.filter}": ${shown.length} clusters, ${alone.length} unclustered photos match.`;
    if (alg.count === 0) text = "No photos yet: the clusters appear here once photos are hashed.";
    ui.summary.textContent = text;
    if (view.count === 0 && alg.count > 0 && needle === "") {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No clusters at this threshold.";
      ui.clusters.append(p);
    }
    drawMarker(alg, k);
    timings.renders++;
    timings.lastRenderMs = performance.now() - started;
  }

  // ------------------------------------------------------------------ the sweep chart

  const W = 720, H = 190, L = 48, R = 12, T = 10, B = 28;
  let marker = null;
  function svg(tag, attrs, parentNode) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (parentNode) parentNode.append(el);
    return el;
  }
  function scales(alg) {
    const ts = alg.thresholds;
    const lo = ts.length ? ts[0] : 0, hi = ts.length ? ts[ts.length - 1] : 1;
    const top = Math.max(1, ...alg.sweep.map((s) => Math.max(s[0], s[1], s[2])));
    return {
      x: (t) => L + ((t - lo) / Math.max(1, hi - lo)) * (W - L - R),
      y: (v) => H - B - (v / top) * (H - T - B),
      lo, hi, top,
    };
  }
  function drawChart(alg) {
    const c = ui.chart;
    c.replaceChildren();
    const s = scales(alg);
    for (const v of [0, s.top / 2, s.top]) {
      svg("line", { class: "grid", x1: L, x2: W - R, y1: s.y(v), y2: s.y(v) }, c);
      svg("text", { x: L - 6, y: s.y(v) + 4, "text-anchor": "end" }, c).textContent = String(Math.round(v));
    }
    svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }, c);
    const ticks = alg.thresholds.filter((_, j, all) => j % Math.ceil(all.length / 10) === 0);
    for (const t of ticks) {
      svg("text", { x: s.x(t), y: H - B + 16, "text-anchor": "middle" }, c).textContent = String(t);
    }
    svg("text", { x: W - R, y: H - 2, "text-anchor": "end" }, c).textContent = "threshold";
    ["clusters", "clustered", "largest"].forEach((cls, j) => {
      const points = alg.thresholds.map((t, k) => `${s.x(t).toFixed(1)},${s.y(alg.sweep[k][j]).toFixed(1)}`);
      svg("polyline", { class: cls, points: points.join(" ") }, c);
    });
    marker = svg("line", { class: "marker", y1: T, y2: H - B, x1: L, x2: L }, c);
    c.onclick = (event) => {
      if (!alg.thresholds.length) return;
      const box = c.getBoundingClientRect();
      const x = ((event.clientX - box.left) / box.width) * W;
      let best = 0;
      alg.thresholds.forEach((t, k) => {
        if (Math.abs(s.x(t) - x) < Math.abs(s.x(alg.thresholds[best]) - x)) best = k;
      });
      setThreshold(best);
    };
    c._scales = s;
  }
  function drawMarker(alg, k) {
    if (!marker || !alg.thresholds.length) return;
    const x = ui.chart._scales.x(alg.thresholds[k]);
    marker.setAttribute("x1", String(x));
    marker.setAttribute("x2", String(x));
  }

  // ------------------------------------------------------------------ controls and deep links

  function nearestIndex(alg, t) {
    let best = 0;
    alg.thresholds.forEach((v, k) => { if (v <= t) best = k; });
    return best;
  }
  function setAlgorithm(alg, threshold) {
    state.algo = prepare(alg);
    ui.algorithm.value = alg.name;
    ui.threshold.max = String(Math.max(0, alg.thresholds.length - 1));
    state.index = threshold === undefined ? Math.floor(alg.thresholds.length / 2)
      : nearestIndex(alg, threshold);
    drawChart(alg);
  }
  function remember() {
    const alg = state.algo;
    if (!alg || !alg.thresholds.length) return;
    const hash = `#${encodeURIComponent(alg.name)}/${alg.thresholds[state.index]}`;
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }
  function setThreshold(k) {
    state.index = k;
    render();
    remember();
  }
  function fromHash() {
    const m = /^#([^/]+)\/(\d+)$/.exec(location.hash);
    if (!m) return false;
    const alg = byName.get(decodeURIComponent(m[1]));
    if (!alg) return false;
    setAlgorithm(alg, Number(m[2]));
    return true;
  }

  for (const alg of algorithms) {
    const option = document.createElement("option");
    option.value = alg.name;
    option.textContent = alg.name;
    ui.algorithm.append(option);
  }
  ui.algorithm.addEventListener("change", () => {
    const alg = byName.get(ui.algorithm.value);
    const t = state.algo && state.algo.thresholds[state.index];
    setAlgorithm(alg, t);
    render();
    remember();
  });
  ui.threshold.addEventListener("input", () => setThreshold(Number(ui.threshold.value)));
  let typing = 0;
  ui.filter.addEventListener("input", () => {
    clearTimeout(typing);
    // Wait for a pause in typing: each render walks every cluster.
    typing = setTimeout(() => { state.filter = ui.filter.value.trim(); render(); }, 120);
  });
  window.addEventListener("hashchange", () => { if (fromHash()) render(); });

  if (state.algo) {
    if (!fromHash()) setAlgorithm(state.algo);
    render();
  } else {
    ui.summary.textContent = "No algorithms configured.";
  }
  timings.readyMs = performance.now();
  document.documentElement.dataset.ready = "true";
})();
