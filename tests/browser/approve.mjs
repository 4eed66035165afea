#!/usr/bin/env node
// Drives the approval console (GET /ui) in headless Debian Chromium, as an
// approver would: sign in, wait for the live stream, wait for a held request
// from EXPECT_REQUESTER to appear without a reload, approve it.
//
//   CONSOLE_URL=http://127.0.0.1:PORT/ui APPROVER_TOKEN=... EXPECT_REQUESTER=alice \
//     [COMMENT=...] [SCREENSHOT=/tmp/console.png] [CHROMIUM=/usr/bin/chromium] \
//     node tests/browser/approve.mjs
//
// Success: one JSON line {"approved_id":"apr_..."} on stdout, exit 0.
// Failure: the reason (and every console error, page error and failed request
// the page had) on stderr, a screenshot if SCREENSHOT is set, exit 1.
// The whole run is bounded at 60 s.

import { chromium } from 'playwright-core';

const HARD_TIMEOUT_MS = 60_000;
const LIVE_TIMEOUT_MS = 15_000;
const APPEAR_TIMEOUT_MS = 30_000;
const OUTCOME_TIMEOUT_MS = 10_000;

const env = process.env;
const CONSOLE_URL = env.CONSOLE_URL;
const TOKEN = env.APPROVER_TOKEN;
const REQUESTER = env.EXPECT_REQUESTER;
const COMMENT = env.COMMENT ?? '';
const SCREENSHOT = env.SCREENSHOT || '';
const CHROMIUM = env.CHROMIUM || '/usr/bin/chromium';

const log = (msg) => process.stderr.write(`approve.mjs: ${msg}\n`);

let browser = null;
let page = null;
let finished = false;
const problems = []; // console errors, page errors, failed requests

async function screenshot() {
  if (!SCREENSHOT || !page) return;
  try {
    await page.screenshot({ path: SCREENSHOT, fullPage: true, timeout: 5_000 });
    log(`screenshot: ${SCREENSHOT}`);
  } catch (e) {
    log(`could not take a screenshot: ${e.message}`);
  }
}

async function fail(message) {
  if (finished) return;
  finished = true;
  log(`FAILED: ${message}`);
  if (problems.length) {
    log(`the page reported ${problems.length} problem(s):`);
    for (const p of problems) log(`  - ${p}`);
  }
  if (page) {
    try {
      const state = await page.evaluate(() => {
        const t = (sel) => document.querySelector(sel)?.textContent?.trim() ?? null;
        return {
          live: t('[data-testid=live]'),
          signin: t('[data-testid=sign-in-message]'),
          banner: t('[data-testid=banner]'),
          status: t('[data-testid=status]'),
          rows: [...document.querySelectorAll('[data-testid=approval-row]')].map((r) => ({
            id: r.dataset.id, requester: r.dataset.requester, status: r.dataset.status,
            outcome: r.querySelector('[data-testid=outcome]')?.textContent ?? '',
          })),
        };
      }, null, { timeout: 3_000 });
      log(`page state: ${JSON.stringify(state)}`);
    } catch (_) { /* the page may be gone */ }
  }
  await screenshot();
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}

// Hard overall limit, and a last-resort exit should closing hang.
const hardTimer = setTimeout(() => {
  setTimeout(() => process.exit(1), 5_000).unref();
  fail(`timed out after ${HARD_TIMEOUT_MS / 1000} s`);
}, HARD_TIMEOUT_MS);

function checkProblems(step) {
  if (problems.length) throw new Error(`page problems while ${step}`);
}

// Waits for fn (run in the page) to return a truthy value; a value starting
// with "error:" ends the wait with that message.
async function waitInPage(what, fn, arg, timeout) {
  let v;
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling: 100 });
    v = await handle.jsonValue();
  } catch (e) {
    throw new Error(`${what}: ${e.message.split('\n')[0]}`);
  }
  if (typeof v === 'string' && v.startsWith('error:')) throw new Error(`${what}: ${v.slice(6)}`);
  return v;
}

async function main() {
  const missing = ['CONSOLE_URL', 'APPROVER_TOKEN', 'EXPECT_REQUESTER'].filter((k) => !env[k]);
  if (missing.length) throw new Error(`set ${missing.join(', ')}`);
  const consoleUrl = new URL(CONSOLE_URL);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 20_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(10_000);

  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      const loc = msg.location();
      problems.push(`console error: ${msg.text()}${loc?.url ? ` (${loc.url}:${loc.lineNumber})` : ''}`);
    }
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.stack || err.message}`));
  page.on('requestfailed', (req) => {
    if (finished) return; // closing the browser aborts the event stream
    problems.push(`request failed: ${req.method()} ${req.url()}: ${req.failure()?.errorText ?? 'unknown'}`);
  });
  page.on('response', (res) => {
    if (res.status() >= 400) problems.push(`HTTP ${res.status()}: ${res.request().method()} ${res.url()}`);
  });

  const res = await page.goto(consoleUrl.href, { waitUntil: 'domcontentloaded', timeout: 15_000 });
  if (!res || res.status() !== 200) throw new Error(`GET ${consoleUrl.href} answered ${res ? res.status() : 'nothing'}`);
  const ctype = res.headers()['content-type'] || '';
  if (!ctype.startsWith('text/html')) throw new Error(`GET ${consoleUrl.href} has content-type ${ctype || '(none)'}`);

  // Sign in.
  await page.locator('[data-testid=token]').fill(TOKEN);
  await page.locator('[data-testid=sign-in]').click();

  // The live stream is connected (or sign-in failed: say why).
  await waitInPage('waiting for the live indicator', () => {
    const live = document.querySelector('[data-testid=live]');
    if (live && live.textContent.trim() === 'live') return 'live';
    const signin = document.querySelector('[data-testid=sign-in-message]');
    const signinView = signin && signin.closest('section');
    if (signinView && !signinView.hidden && signin.classList.contains('error') && signin.textContent.trim()) {
      return 'error:' + signin.textContent.trim();
    }
    const banner = document.querySelector('[data-testid=banner]');
    if (banner && !banner.hidden && banner.textContent.trim() && live && live.dataset.state === 'offline') {
      return 'error:' + banner.textContent.trim();
    }
    return false;
  }, null, LIVE_TIMEOUT_MS);
  checkProblems('signing in');
  log('signed in; stream is live');

  // The held request appears through the live stream (no reload).
  const id = await waitInPage(`waiting for a pending request from ${JSON.stringify(REQUESTER)}`, (who) => {
    const rows = document.querySelectorAll('[data-testid=approval-row][data-status=pending]');
    for (const r of rows) if (r.dataset.requester === who) return r.dataset.id;
    return false;
  }, REQUESTER, APPEAR_TIMEOUT_MS);
  checkProblems('waiting for the request');
  log(`request ${id} from ${REQUESTER} appeared`);

  const row = page.locator(`[data-testid="approval-row"][data-id=${JSON.stringify(id)}]`);
  const approve = row.locator('[data-testid=approve]');
  if (await approve.isDisabled()) {
    const text = (await row.innerText()).replace(/\s+/g, ' ').trim();
    throw new Error(`the approve button of ${id} is disabled (row: ${text})`);
  }
  if (COMMENT) await row.locator('[data-testid=comment]').fill(COMMENT);
  await approve.click();

  // The row shows the approved outcome, or leaves the list; an error shows in the row.
  const outcome = await waitInPage(`waiting for the outcome of ${id}`, (rid) => {
    const r = [...document.querySelectorAll('[data-testid=approval-row]')].find((x) => x.dataset.id === rid);
    if (!r) return 'gone';
    const st = r.dataset.status;
    const text = r.querySelector('[data-testid=outcome]')?.textContent.trim() ?? '';
    if (st === 'approved' || st === 'used') return st;
    if (st && st !== 'pending') return `error:the request ended as ${st}: ${text}`;
    const out = r.querySelector('[data-testid=outcome]');
    if (out && out.classList.contains('error') && text) return 'error:' + text;
    return false;
  }, id, OUTCOME_TIMEOUT_MS);

  if (outcome === 'gone') {
    // Left the list before we saw it: make sure it was approved, not denied or expired.
    const st = await page.evaluate((rid) => {
      const r = [...document.querySelectorAll('[data-testid=recent-row]')].find((x) => x.dataset.id === rid);
      return r ? r.dataset.status : null;
    }, id);
    if (st !== null && st !== 'approved' && st !== 'used') throw new Error(`${id} left the list as ${st}`);
  }
  checkProblems('approving');
  log(`${id} ${outcome === 'gone' ? 'left the pending list' : 'shows ' + outcome}`);

  await screenshot();
  finished = true;
  clearTimeout(hardTimer);
  await browser.close().catch(() => {});
  process.stdout.write(JSON.stringify({ approved_id: id }) + '\n');
  process.exit(0);
}

// Playwright's messages carry a colourised call log: keep it, minus the colours.
main().catch((e) => fail((e && e.message ? e.message : String(e)).replace(/\x1b\[[0-9;]*m/g, '').trim()));
