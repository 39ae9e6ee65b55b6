// recipe report: draws the training charts (inline SVG) from the JSON data
// element #report-data. No library, no network. Each chart: hover shows
// the step and every visible series' value there; the legend toggles series;
// "log y" switches the value axis. After drawing, a chart's <figure> carries
// data-drawn="1" and data-points (the number of points drawn).
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 640, H = 280, PAD = { left: 58, right: 16, top: 12, bottom: 34 };
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const specs = {};
  (data.charts || []).forEach(function (c) { specs[c.id] = c; });

  function svgEl(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(e);
    return e;
  }

  function fmt(v, digits) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(2);
    return String(+v.toPrecision(digits || 4));
  }

  function ticks(lo, hi, n, integers) {
    if (hi <= lo) return [lo];
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    let step = [1, 2, 2.5, 5, 10].map(function (m) { return m * mag; }).find(function (s) { return s >= raw; });
    if (integers) step = Math.max(1, Math.round(step));
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
    return out;
  }

  function nearest(points, x) {
    let lo = 0, hi = points.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (points[mid][0] < x) lo = mid; else hi = mid;
    }
    return Math.abs(points[lo][0] - x) <= Math.abs(points[hi][0] - x) ? points[lo] : points[hi];
  }

  function Chart(fig, spec) {
    this.fig = fig;
    this.spec = spec;
    this.hidden = new Set();
    this.logY = false;
    this.plot = fig.querySelector(".plot");
    this.tip = document.createElement("div");
    this.tip.className = "tip";
    this.plot.appendChild(this.tip);
    this.buildControls();
    this.draw();
  }

  Chart.prototype.buildControls = function () {
    const self = this, legend = this.fig.querySelector(".legend");
    this.spec.series.forEach(function (s, i) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "series-toggle";
      b.setAttribute("aria-pressed", "true");
      const swatch = document.createElement("span");
      swatch.className = "swatch" + (s.dashed ? " dashed" : "");
      swatch.style.borderColor = s.color;
      b.appendChild(swatch);
      b.appendChild(document.createTextNode(s.label));
      b.addEventListener("click", function () {
        if (self.hidden.has(i)) self.hidden.delete(i); else self.hidden.add(i);
        b.setAttribute("aria-pressed", String(!self.hidden.has(i)));
        self.draw();
      });
      legend.appendChild(b);
    });
    const log = this.fig.querySelector(".logy");
    if (log) log.addEventListener("click", function () {
      self.logY = !self.logY;
      log.setAttribute("aria-pressed", String(self.logY));
      self.draw();
    });
  };

  Chart.prototype.visible = function () {
    const self = this;
    return this.spec.series.filter(function (s, i) { return !self.hidden.has(i) && s.points.length; });
  };

  Chart.prototype.scales = function (series) {
    const xs = [], ys = [];
    series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); }); });
    const useLog = this.logY && ys.every(function (y) { return y > 0; });
    const ty = useLog ? Math.log10 : function (y) { return y; };
    let x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    let y0 = Math.min.apply(null, ys.map(ty)), y1 = Math.max.apply(null, ys.map(ty));
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const padY = (y1 - y0) * 0.06;
    y0 -= padY; y1 += padY;
    const iw = W - PAD.left - PAD.right, ih = H - PAD.top - PAD.bottom;
    return {
      log: useLog, x0: x0, x1: x1, y0: y0, y1: y1, integerX: xs.every(Number.isInteger),
      x: function (v) { return PAD.left + (v - x0) / (x1 - x0) * iw; },
      y: function (v) { return PAD.top + (1 - (ty(v) - y0) / (y1 - y0)) * ih; },
      invX: function (px) { return x0 + (px - PAD.left) / iw * (x1 - x0); },
    };
  };

  Chart.prototype.axes = function (svg, sc) {
    const g = svgEl("g", { class: "axes" }, svg);
    ticks(sc.x0, sc.x1, 6, sc.integerX).forEach(function (t) {
      svgEl("line", { x1: sc.x(t), x2: sc.x(t), y1: PAD.top, y2: H - PAD.bottom, class: "grid" }, g);
      svgEl("text", { x: sc.x(t), y: H - PAD.bottom + 16, "text-anchor": "middle" }, g).textContent = fmt(t);
    });
    const yt = ticks(sc.y0, sc.y1, 5);
    yt.forEach(function (t) {
      const v = sc.log ? Math.pow(10, t) : t, y = sc.y(v);
      svgEl("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: "grid" }, g);
      svgEl("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end" }, g).textContent = fmt(v);
    });
    svgEl("text", { x: W - PAD.right, y: H - 4, "text-anchor": "end", class: "axis-label" }, g).textContent = "step";
  };

  Chart.prototype.lines = function (svg, sc, series) {
    let drawn = 0;
    series.forEach(function (s) {
      const d = s.points.map(function (p, i) {
        return (i ? "L" : "M") + sc.x(p[0]).toFixed(1) + "," + sc.y(p[1]).toFixed(1);
      }).join("");
      const path = svgEl("path", { d: d, class: "series", stroke: s.color, "data-points": s.points.length }, svg);
      if (s.dashed) path.setAttribute("stroke-dasharray", "6 4");
      if (s.points.length <= 40) s.points.forEach(function (p) {
        svgEl("circle", { cx: sc.x(p[0]), cy: sc.y(p[1]), r: 2.5, fill: s.color, class: "dot" }, svg);
      });
      drawn += s.points.length;
    });
    return drawn;
  };

  Chart.prototype.hover = function (svg, sc, series) {
    const self = this;
    const cursor = svgEl("line", { y1: PAD.top, y2: H - PAD.bottom, class: "cursor", visibility: "hidden" }, svg);
    const marks = series.map(function (s) { return svgEl("circle", { r: 4.5, fill: s.color, class: "mark", visibility: "hidden" }, svg); });
    const area = svgEl("rect", { x: PAD.left, y: PAD.top, width: W - PAD.left - PAD.right,
      height: H - PAD.top - PAD.bottom, class: "hover-area" }, svg);
    area.addEventListener("mousemove", function (ev) {
      const box = svg.getBoundingClientRect(), px = (ev.clientX - box.left) * W / box.width;
      const x = sc.invX(px), hits = series.map(function (s) { return nearest(s.points, x); });
      const step = hits.reduce(function (b, p) { return Math.abs(p[0] - x) < Math.abs(b[0] - x) ? p : b; })[0];
      cursor.setAttribute("x1", sc.x(step)); cursor.setAttribute("x2", sc.x(step));
      cursor.setAttribute("visibility", "visible");
      self.tip.textContent = "";
      const head = document.createElement("div");
      head.className = "tip-head";
      head.textContent = "step " + fmt(step);
      self.tip.appendChild(head);
      hits.forEach(function (p, i) {
        marks[i].setAttribute("cx", sc.x(p[0])); marks[i].setAttribute("cy", sc.y(p[1]));
        marks[i].setAttribute("visibility", p[0] === step ? "visible" : "hidden");
        if (p[0] !== step) return;
        const row = document.createElement("div");
        row.style.color = series[i].color;
        row.textContent = series[i].label + ": " + fmt(p[1], 6);
        self.tip.appendChild(row);
      });
      self.tip.style.display = "block";
      const left = (ev.clientX - self.plot.getBoundingClientRect().left);
      self.tip.style.left = Math.min(left + 14, self.plot.clientWidth - self.tip.offsetWidth - 4) + "px";
    });
    area.addEventListener("mouseleave", function () {
      cursor.setAttribute("visibility", "hidden");
      marks.forEach(function (m) { m.setAttribute("visibility", "hidden"); });
      self.tip.style.display = "none";
    });
  };

  Chart.prototype.draw = function () {
    const old = this.plot.querySelector("svg");
    if (old) old.remove();
    const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, class: "chart-svg", role: "img" });
    this.plot.insertBefore(svg, this.tip);
    const series = this.visible();
    let drawn = 0;
    if (!series.length) {
      svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg).textContent =
        "every series is hidden: click one in the legend";
    } else {
      const sc = this.scales(series);
      this.axes(svg, sc);
      drawn = this.lines(svg, sc, series);
      this.hover(svg, sc, series);
    }
    this.fig.dataset.points = String(drawn);
    this.fig.dataset.drawn = "1";
  };

  document.querySelectorAll("figure.chart").forEach(function (fig) {
    const spec = specs[fig.dataset.chart];
    if (spec) new Chart(fig, spec);
  });
  document.body.dataset.chartsDrawn = String(document.querySelectorAll("figure.chart[data-drawn='1']").length);
})();
