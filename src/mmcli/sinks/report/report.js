// mmcli report: renders the records in #mmcli-data and the thumbnails in #mmcli-thumbs, one page of the
// gallery at a time (the URL fragment holds the state: #page=2&q=cat&sort=low). Everything from the
// inputs goes into the DOM as text (textContent, attributes), never as markup.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("mmcli-data").textContent);
  var T = JSON.parse(document.getElementById("mmcli-thumbs").textContent);
  var main = document.getElementById("main");
  var INK = [8, 48, 107]; // the confusion matrix's colour at 100 % of a row

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) if (arguments[i]) parent.appendChild(arguments[i]);
    return parent;
  }
  function put(parent, child) { parent.appendChild(child); return child; }
  function count(n, noun) { return n.toLocaleString("en") + " " + noun + (n === 1 ? "" : "s"); }
  function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %"; }
  function num(v) { return v === null || v === undefined ? "–" : v.toFixed(3); }
  function isUrl(s) { return /^https?:\/\//i.test(s); }
  function basename(s) {
    var parts = String(s).replace(/[\/\\]+$/, "").split(/[\/\\]/);
    return parts[parts.length - 1] || s;
  }
  function section(id, title) {
    var s = add(el("section"), el("h2", null, title));
    s.id = id;
    add(main, s);
    return s;
  }

  // -- state in the fragment ------------------------------------------------------------------------
  function state() {
    var p = new URLSearchParams(location.hash.slice(1));
    return { page: parseInt(p.get("page") || "1", 10) || 1, q: p.get("q") || "", sort: p.get("sort") || "" };
  }
  function href(st) {
    var p = new URLSearchParams();
    p.set("page", String(st.page));
    if (st.q) p.set("q", st.q);
    if (st.sort) p.set("sort", st.sort);
    return "#" + p.toString();
  }

  // -- header -------------------------------------------------------------------------------------------
  function header() {
    var parts = [D.kind];
    if (D.models.length) parts.push("model " + D.models.join(", "));
    if (D.kind !== "eval") parts.push(count(D.items.length, "image"));
    parts.push(count(D.error_count, "error"));
    parts.push("written " + D.generated + " by mmcli " + D.version);
    document.getElementById("meta").textContent = parts.join(" · ");
    if (D.kind === "caption" && D.prompts.length) {
      add(main, el("p", "prompts", "prompt" + (D.prompts.length > 1 ? "s: " : ": ") + D.prompts.join(" | ")));
    }
    D.notices.forEach(function (text) { add(main, el("p", "notice", text)); });
  }

  // -- gallery ------------------------------------------------------------------------------------------
  function thumb(it) {
    var box = el("div", "thumb");
    var t = it.t === undefined || it.t === null ? null : T[it.t];
    if (typeof t === "string") {
      var img = el("img");
      img.alt = basename(it.i);
      img.decoding = "async";
      img.src = "data:image/jpeg;base64," + t;
      return add(box, img);
    }
    box.classList.add("placeholder");
    return add(box, el("span", null, t && t.error ? "no preview: " + t.error : "no preview"));
  }
  function name(it) {
    var node;
    if (isUrl(it.i)) {
      node = el("a", "name", basename(it.i));
      node.href = it.i;
      node.rel = "noreferrer noopener";
      node.target = "_blank";
    } else {
      node = el("div", "name", basename(it.i));
    }
    node.title = it.i;
    return node;
  }
  function ranking(pairs, wrong) {
    var ol = el("ol", "top");
    pairs.slice(0, 3).forEach(function (p, i) {
      var li = el("li", i === 0 && wrong ? "wrong" : null);
      var bar = el("span", "mini");
      bar.style.width = Math.round(Math.max(0, Math.min(1, p[1] || 0)) * 100) + "%";
      add(ol, add(li, el("span", "l", p[0]), el("span", "s", num(p[1])), add(el("span", "track"), bar)));
    });
    return ol;
  }
  function card(it, index) {
    var fig = el("figure", "card");
    fig.dataset.index = String(index);
    var cap = add(el("figcaption"), name(it));
    if (D.kind === "classify") {
      add(cap, add(el("div", "pred"), el("span", "label", it.l), el("span", "score", num(it.s))));
      if (it.m) add(cap, el("div", "labels", "labels: " + it.m.join(", ")));
      add(cap, ranking(it.k, false));
    } else if (D.kind === "caption") {
      add(cap, el("p", "caption", it.c));
      if (D.prompts.length > 1 && it.p !== undefined) {
        add(cap, el("div", "prompt", "prompt: " + D.prompts[it.p]));
      }
    } else {
      add(cap, el("div", "truth", "truth: " + it.truth), ranking(it.k, true));
    }
    if (it.w) add(cap, el("div", "warning", "warning: " + it.w));
    return add(fig, thumb(it), cap);
  }
  function text(it) {
    return [it.i, it.l, it.c, it.truth].concat((it.k || []).map(function (p) { return p[0]; }))
      .join("\n").toLowerCase();
  }
  var SORTS = {
    low: function (a, b) { return (a.s === null ? -1 : a.s) - (b.s === null ? -1 : b.s); },
    high: function (a, b) { return (b.s === null ? -1 : b.s) - (a.s === null ? -1 : a.s); },
    label: function (a, b) { return a.l < b.l ? -1 : a.l > b.l ? 1 : 0; },
  };
  function pager(st, pages, total, first, last) {
    var nav = el("nav", "pager");
    function go(page, label, cls) {
      if (page < 1 || page > pages || page === st.page) return el("span", cls + " off", label);
      var a = el("a", cls, label);
      a.href = href({ page: page, q: st.q, sort: st.sort });
      return a;
    }
    return add(nav, go(st.page - 1, "‹ previous", "prev"),
      el("span", "where", "page " + st.page + " of " + pages + " · " +
        (total ? (first + 1) + "–" + last + " of " + total.toLocaleString("en") : "nothing to show")),
      go(st.page + 1, "next ›", "next"));
  }
  function gallery(list, title) {
    var sec = section("gallery", title + " (" + list.length.toLocaleString("en") + ")");
    var tools = put(sec, el("div", "tools"));
    var box = el("input"); box.type = "search"; box.placeholder = "filter: file name, label, caption…";
    add(tools, box);
    var sort = null;
    if (D.kind === "classify") {
      sort = el("select");
      var orders = [["", "input order"], ["low", "score, lowest first"], ["high", "score, highest first"],
        ["label", "label"]];
      orders.forEach(function (o) { var opt = el("option", null, o[1]); opt.value = o[0]; add(sort, opt); });
      add(tools, sort);
    }
    var body = put(sec, el("div", "pages"));
    function render() {
      var st = state();
      if (document.activeElement !== box) box.value = st.q;
      var known = Object.prototype.hasOwnProperty.call(SORTS, st.sort);
      if (sort) sort.value = known ? st.sort : "";
      var q = st.q.toLowerCase();
      var rows = list.map(function (it, i) { return [it, i]; });
      if (q) rows = rows.filter(function (r) { return text(r[0]).indexOf(q) >= 0; });
      var order = D.kind === "classify" && known && SORTS[st.sort];
      if (order) rows.sort(function (a, b) { return order(a[0], b[0]) || a[1] - b[1]; });
      var per = D.per_page, pages = Math.max(1, Math.ceil(rows.length / per));
      st.page = Math.min(Math.max(1, st.page), pages);
      var first = (st.page - 1) * per, last = Math.min(rows.length, first + per);
      var grid = el("div", "grid");
      rows.slice(first, last).forEach(function (r) { add(grid, card(r[0], r[1])); });
      var top = pager(st, pages, rows.length, first, last);
      body.replaceChildren(top, grid, top.cloneNode(true));
      body.dataset.page = String(st.page);
    }
    var timer = 0;
    box.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        location.hash = href({ page: 1, q: box.value, sort: state().sort });
      }, 200);
    });
    if (sort) sort.addEventListener("change", function () {
      location.hash = href({ page: 1, q: state().q, sort: sort.value });
    });
    window.addEventListener("hashchange", function () { render(); sec.scrollIntoView(); });
    render();
  }

  // -- eval ---------------------------------------------------------------------------------------------
  function metrics(ev) {
    var dl = el("dl", "metrics"); dl.id = "metrics";
    function row(key, label, value, shown) {
      var dd = el("dd", "metric", shown);
      dd.dataset.key = key;
      dd.dataset.value = String(value);
      add(dl, el("dt", null, label), dd);
    }
    row("top1", "top-1", ev.top1, pct(ev.top1));
    row("top5", "top-5", ev.top5, pct(ev.top5));
    if (ev.n !== null && ev.n !== undefined) row("n", "images", ev.n, Number(ev.n).toLocaleString("en"));
    if (ev.model) row("model", "model", ev.model, ev.model);
    Object.keys(ev.extra).forEach(function (k) { row(k, k, ev.extra[k], String(ev.extra[k])); });
    add(section("summary", "Accuracy"), dl);
  }
  function colour(v) {
    return "rgb(" + INK.map(function (c) { return Math.round(255 + (c - 255) * v); }).join(",") + ")";
  }
  function confusion(ev) {
    var labels = ev.confusion.labels, M = ev.confusion.matrix, n = labels.length;
    if (!n) return;
    var sec = section("confusion",
      "Confusion matrix (rows: truth, columns: prediction; shade: share of the row)");
    var cell = Math.max(1, Math.min(40, Math.floor(600 / n)));
    var canvas = el("canvas"); canvas.id = "matrix";
    var ctx = canvas.getContext("2d");
    ctx.font = "12px sans-serif";
    var named = cell >= 12, margin = 0;
    if (named) labels.forEach(function (l) { margin = Math.max(margin, ctx.measureText(l).width); });
    margin = named ? Math.min(160, Math.ceil(margin) + 8) : 0;
    var size = n * cell, ratio = window.devicePixelRatio || 1;
    canvas.width = (margin + size) * ratio; canvas.height = (margin + size) * ratio;
    canvas.style.width = margin + size + "px"; canvas.style.height = margin + size + "px";
    ctx = canvas.getContext("2d"); ctx.scale(ratio, ratio); ctx.font = "12px sans-serif";
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, margin + size, margin + size);
    var sums = M.map(function (row) { return row.reduce(function (a, b) { return a + b; }, 0); });
    M.forEach(function (row, r) {
      row.forEach(function (count, c) {
        if (!count) return;
        var v = count / sums[r];
        ctx.fillStyle = colour(v);
        ctx.fillRect(margin + c * cell, margin + r * cell, cell, cell);
        if (cell >= 28) {
          ctx.fillStyle = v > 0.5 ? "#fff" : "#222"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
          ctx.fillText(String(count), margin + (c + 0.5) * cell, margin + (r + 0.6) * cell);
        }
      });
    });
    if (named) {
      ctx.fillStyle = "#222"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
      labels.forEach(function (l, i) {
        ctx.fillText(l, margin - 4, margin + (i + 0.5) * cell, margin - 6);
        ctx.save(); ctx.translate(margin + (i + 0.5) * cell, margin - 4); ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left"; ctx.fillText(l, 0, 0, margin - 6); ctx.restore();
      });
    }
    var tip = el("div", "tip", "point at a cell");
    add(sec, canvas, tip);
    canvas.addEventListener("mousemove", function (e) {
      var box = canvas.getBoundingClientRect();
      var c = Math.floor((e.clientX - box.left - margin) / cell);
      var r = Math.floor((e.clientY - box.top - margin) / cell);
      if (r < 0 || c < 0 || r >= n || c >= n) return;
      tip.textContent = "truth " + labels[r] + " → predicted " + labels[c] + ": " + M[r][c] +
        " (" + pct(sums[r] ? M[r][c] / sums[r] : 0) + " of " + labels[r] + ")";
    });
    var box = canvas.getBoundingClientRect();
    canvas.dataset.x0 = String(Math.round(box.left + window.scrollX + margin));
    canvas.dataset.y0 = String(Math.round(box.top + window.scrollY + margin));
    canvas.dataset.cell = String(cell);
    var pairs = [];
    M.forEach(function (row, r) {
      row.forEach(function (count, c) { if (r !== c && count) pairs.push([count, r, c]); });
    });
    pairs.sort(function (a, b) { return b[0] - a[0]; });
    if (pairs.length) {
      add(sec, el("h3", null, "Most confused"));
      var ol = put(sec, el("ol", "confused"));
      pairs.slice(0, 10).forEach(function (p) {
        add(ol, el("li", "pair", labels[p[1]] + " → " + labels[p[2]] + ": " + p[0]));
      });
    }
  }
  function classes(ev) {
    if (!ev.per_class.length) return;
    var sec = section("classes", "Per-class accuracy (recall), worst first");
    var rows = ev.per_class.slice().sort(function (a, b) {
      return (a[2] === null ? -1 : a[2]) - (b[2] === null ? -1 : b[2]) || (a[0] < b[0] ? -1 : 1);
    });
    var list = put(sec, el("div", "bars"));
    rows.forEach(function (r) {
      var row = el("div", "bar-row");
      row.dataset.label = r[0];
      row.dataset.recall = String(r[2]);
      row.dataset.precision = String(r[1]);
      var fill = el("div", "fill");
      fill.style.width = Math.round((r[2] || 0) * 1000) / 10 + "%";
      add(list, add(row, el("span", "cls", r[0]), add(el("div", "bar"), fill),
        el("span", "val", "recall " + pct(r[2]) + " · precision " + pct(r[1]) + " · n " +
          (r[3] === null ? "–" : r[3]))));
    });
  }

  // -- errors -------------------------------------------------------------------------------------------
  function errors() {
    if (!D.errors.length) return;
    var sec = section("errors", "Errors (" + D.error_count.toLocaleString("en") + ")");
    var table = put(sec, el("table", "errors"));
    D.errors.forEach(function (e) {
      add(table, add(el("tr"), el("td", "input", e.i), el("td", "reason", e.e)));
    });
  }

  header();
  if (D.kind === "eval" && D.eval) {
    metrics(D.eval);
    confusion(D.eval);
    classes(D.eval);
    gallery(D.eval.mis, "Misclassified");
  } else if (D.kind !== "eval") {
    gallery(D.items, "Images");
  }
  errors();
  document.documentElement.dataset.renderMs = String(Math.round(performance.now()));
})();
