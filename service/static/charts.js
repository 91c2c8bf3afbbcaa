"use strict";
// A thin layer over uPlot: one chart per element, rebuilt only when its series change and
// otherwise updated in place, sized to its card, step charts sharing one cursor. After each
// draw the element's data-points attribute holds how many data points the chart drew, and
// data-series the same per series label as JSON (the browser test reads them); a failed draw
// leaves its message in data-error.

const charts = (() => {
  const HEIGHT = 160;
  // Okabe-Ito: distinguishable with the common colour-vision deficiencies.
  const colors = {
    blue: "#0072B2", orange: "#E69F00", green: "#009E73", red: "#D55E00",
    purple: "#CC79A7", sky: "#56B4E9", grey: "#8a8a8a", black: "#222222",
  };
  const palette = [
    colors.blue, colors.orange, colors.green, colors.red, colors.purple, colors.sky,
    colors.black, "#8c6d31",
  ];

  /** Data points per series label (finite values; null marks a gap). */
  function countPoints(u) {
    const counts = {};
    u.series.forEach((s, i) => {
      if (i > 0) counts[s.label] = u.data[i].filter((v) => v !== null && isFinite(v)).length;
    });
    return counts;
  }

  // Series factories. uPlot hides points on dense lines by itself.
  const line = (label, stroke, extra = {}) =>
    ({ label, stroke, width: 1.5, spanGaps: true, ...extra });
  const stepped = (label, stroke, extra = {}) =>
    line(label, stroke, { paths: uPlot.paths.stepped({ align: 1 }), ...extra });
  const dots = (label, color, extra = {}) => ({
    label, stroke: color, fill: color, paths: () => null,
    points: { show: true, size: 7, stroke: color, fill: color }, ...extra,
  });
  const bars = (label, color, size, extra = {}) => ({
    label, stroke: color, fill: color, width: 0, points: { show: false },
    paths: uPlot.paths.bars({ size: [size, 80], align: 0 }), ...extra,
  });
  // Shading over the plot's full height from each non-null x to the next x (a span of steps,
  // e.g. the regions that had some property); its own scale, no axis.
  const shadePaths = (u, seriesIdx) => {
    const xs = u.data[0], ys = u.data[seriesIdx], fill = new Path2D();
    const { left, top, width, height } = u.bbox;
    const px = (i) => Math.min(Math.max(u.valToPos(xs[i], "x", true), left), left + width);
    for (let i = 0; i + 1 < xs.length; i++) {
      if (ys[i] !== null) fill.rect(px(i), top, px(i + 1) - px(i), height);
    }
    return { stroke: new Path2D(), fill, clip: null, band: null, gaps: null, flags: 0 };
  };
  const shade = (label, color) => ({
    label, stroke: color, fill: color, width: 0, scale: "shade", paths: shadePaths,
    points: { show: false }, value: (u, v) => (v === null || v === undefined ? "–" : "yes"),
  });
  const SHADE_SCALE = { range: () => [0, 1] };

  /**
   * A y axis as wide as its widest tick label (a fixed width let "1,000" run into the axis
   * title): tick + gap + text. The title has its own labelSize on top. uPlot calls this again
   * until the sizes settle; after two rounds the last size stands.
   */
  function fitWidth(u, values, axisIdx, cycleNum) {
    const axis = u.axes[axisIdx];
    if (cycleNum > 1) return axis._size;
    u.ctx.font = axis.font[0];
    const widest = Math.max(0, ...(values || []).map((v) => u.ctx.measureText(v).width));
    return Math.ceil(axis.ticks.size + axis.gap + widest / uPlot.pxRatio) + 2;
  }

  /** An x axis as tall as its tick labels' lines (a time axis adds the date below). */
  function fitHeight(u, values, axisIdx, cycleNum) {
    const axis = u.axes[axisIdx];
    if (cycleNum > 1) return axis._size;
    const lines = Math.max(1, ...(values || []).map((v) => String(v).split("\n").length));
    const fontSize = axis.font[2] || 12; // CSS pixels
    return Math.ceil(axis.ticks.size + axis.gap + lines * fontSize * 1.25) + 2;
  }

  /** Categories (classes, ranks) on the x axis: integer ticks, half a bar of margin. */
  const categories = (label) => ({
    label,
    range: (u, min, max) => (min === null ? [-0.5, 0.5] : [min - 0.5, max + 0.5]),
    incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000],
    values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? v : "")),
  });

  const axis = (label, extra = {}) => ({ label, labelSize: 18, size: fitWidth, ...extra });
  const rightAxis = (scale, label, extra = {}) =>
    axis(label, { scale, side: 1, grid: { show: false }, ...extra });

  function options(el, spec) {
    const x = spec.x;
    return {
      width: Math.max(el.clientWidth, 200),
      height: HEIGHT,
      scales: { x: { time: !!x.time, ...(x.range ? { range: x.range } : {}) }, ...spec.scales },
      series: [{ label: x.label, value: x.value }, ...spec.series],
      axes: [
        { label: x.label, labelSize: 18, size: fitHeight, values: x.values, incrs: x.incrs },
        ...spec.axes,
      ],
      bands: spec.bands || [],
      cursor: x.sync ? { sync: { key: x.sync } } : {},
      legend: { live: true },
      hooks: {
        draw: [(u) => {
          const counts = countPoints(u);
          el.dataset.series = JSON.stringify(counts);
          el.dataset.points = String(Object.values(counts).reduce((a, b) => a + b, 0));
        }],
      },
    };
  }

  const resized = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const el = entry.target;
      if (el._plot && el.clientWidth !== el._plot.width) {
        el._plot.setSize({ width: Math.max(el.clientWidth, 200), height: HEIGHT });
      }
    }
  });

  /**
   * Draw `data` (uPlot aligned data: x values first) into `el` as described by `spec`:
   * {x: {label, time?, sync?, range?, values?, incrs?}, series, axes, scales?, bands?}.
   */
  function draw(el, spec, data) {
    try {
      const key = JSON.stringify(spec.series.map((s) => s.label));
      if (el._plot && el._key === key) {
        el._plot.setData(data);
      } else {
        if (el._plot) el._plot.destroy();
        el._plot = new uPlot(options(el, spec), data, el);
        el._key = key;
        resized.observe(el);
      }
      // uPlot pads a single x value to [0, 100] without asking the x range function (one
      // rank, one class): set the data's extent, which that function then pads.
      const xs = data[0];
      if (spec.x.range && xs.length) {
        el._plot.setScale("x", { min: Math.min(...xs), max: Math.max(...xs) });
      }
      delete el.dataset.error;
    } catch (err) {
      el.dataset.error = String(err);
      console.error(el.id, err);
    }
  }

  return {
    draw, line, stepped, dots, bars, shade, axis, rightAxis, categories, colors, palette,
    SHADE_SCALE,
  };
})();
