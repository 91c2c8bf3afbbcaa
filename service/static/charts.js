"use strict";
// A thin layer over uPlot: one chart per element, rebuilt only when its series change and
// otherwise updated in place, sized to its card, step charts sharing one cursor. After each
// draw the element's data-points attribute holds how many data points the chart drew (the
// browser test reads it); a failed draw leaves its message in data-error.

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

  function countPoints(data) {
    let n = 0;
    for (let s = 1; s < data.length; s++) {
      for (const v of data[s]) if (v !== null && v !== undefined && isFinite(v)) n++;
    }
    return n;
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

  const axis = (label, extra = {}) => ({ label, labelSize: 16, size: 48, ...extra });
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
        { label: x.label, labelSize: 16, size: 36, values: x.values, incrs: x.incrs },
        ...spec.axes,
      ],
      bands: spec.bands || [],
      cursor: x.sync ? { sync: { key: x.sync } } : {},
      legend: { live: true },
      hooks: {
        draw: [(u) => { el.dataset.points = String(countPoints(u.data)); }],
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
      delete el.dataset.error;
    } catch (err) {
      el.dataset.error = String(err);
      console.error(el.id, err);
    }
  }

  return { draw, line, stepped, dots, bars, axis, rightAxis, colors, palette };
})();
