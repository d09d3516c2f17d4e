// Opens a vigil load HTML report in Debian's headless Chromium, records
// every request the page makes, takes a full-page screenshot and prints
// what the DOM holds as one JSON line, for tests/report.rs to check.
//
//   node tests/browser/check_report.mjs report.html shot.png
import { chromium } from 'playwright-core';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const [html, png] = process.argv.slice(2);
const url = pathToFileURL(resolve(html)).href;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  // Playwright gives every launch a fresh temporary profile (user data dir).
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(url, { waitUntil: 'load' });
  const dom = await page.evaluate(() => {
    const charts = [...document.querySelectorAll('svg.chart')].map((svg) => ({
      id: svg.id,
      points: Number(svg.dataset.points),
      width: svg.getBoundingClientRect().width,
      series: [...svg.querySelectorAll('.series')].map((s) => ({
        name: s.dataset.name,
        // A polyline/polygon's points, or a bar group's rectangles.
        marks: s.tagName === 'g' ? s.querySelectorAll('rect').length
                                 : (s.getAttribute('points') || '').trim().split(/\s+/).filter(Boolean).length,
      })),
    }));
    const kills = [...document.querySelectorAll('svg#chart-throughput line.marker.kill')]
      .map((l) => Number(l.dataset.count));
    const text = (id) => document.getElementById(id)?.textContent ?? null;
    return {
      title: document.title,
      charts,
      kills,
      totals: { requests: text('total-requests'), errors: text('total-errors'), killed: text('total-killed') },
      summaryRows: document.querySelectorAll('table#summary tr').length,
    };
  });
  await page.screenshot({ path: png, fullPage: true });
  console.log(JSON.stringify({ url, requests, ...dom }));
} finally {
  await browser.close();
}
