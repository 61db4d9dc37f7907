// The overview's charts (uPlot, vendored): drawn from the JSON the page embeds, refreshed every
// 10 s from /api/series. `window.eventjobsCharts` holds the uPlot instances (their `.data`).
(function () {
  const source = document.getElementById("series-data");
  if (!source || typeof uPlot === "undefined") return;
  const windowKey = source.dataset.window;
  const series = JSON.parse(source.textContent);
  const width = (id) => Math.max(320, document.getElementById(id).clientWidth - 8);
  const axes = [{}, { size: 50 }];
  function make(id, label, columns, seriesOptions) {
    return new uPlot({
      width: width(id), height: 240, series: [{}, ...seriesOptions], axes: axes,
      scales: { x: { time: true } }, legend: { live: true },
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),  // the tables show UTC too
    }, columns, document.getElementById(id));
  }
  const charts = {
    throughput: make("chart-throughput", "jobs", [series.x, series.finished, series.enqueued], [
      { label: "finished / min", stroke: "#2457c5", fill: "rgba(36,87,197,0.12)", width: 2 },
      { label: "enqueued / min", stroke: "#9ca3af", width: 1.5, dash: [4, 3] },
    ]),
    failures: make("chart-failures", "%", [series.x, series.failure_rate_pct], [
      { label: "failed attempts %", stroke: "#b42318", fill: "rgba(180,35,24,0.10)", width: 2, spanGaps: false,
        points: { show: true, size: 7 } },
    ]),
  };
  window.eventjobsCharts = charts;
  async function refresh() {
    try {
      const answer = await fetch("/api/series?window=" + encodeURIComponent(windowKey), { credentials: "same-origin" });
      if (!answer.ok) return;
      const s = await answer.json();
      charts.throughput.setData([s.x, s.finished, s.enqueued]);
      charts.failures.setData([s.x, s.failure_rate_pct]);
    } catch (e) { /* the next tick tries again */ }
  }
  setInterval(refresh, 10000);
  window.addEventListener("resize", () => {
    charts.throughput.setSize({ width: width("chart-throughput"), height: 240 });
    charts.failures.setSize({ width: width("chart-failures"), height: 240 });
  });
})();
