// k6 script of bench/open_loop.py: POSTs of JSON bodies to one URL, one request per iteration.
//
//   k6 run -e URL=http://127.0.0.1:8000/v1/embeddings -e BODIES=bodies.json -e RATE=200 -e SECONDS=30 \
//          -e VUS=200 --out csv=samples.csv bench/open_loop.js
//
// With RATE: open loop. The `constant-arrival-rate` executor starts iteration i at
// start + i / RATE seconds whether or not earlier requests have been answered; an iteration that
// finds all VUS busy is counted in `dropped_iterations`, never delayed. Each request's latency
// (`from_schedule`, ms, tagged with its HTTP status) runs from that scheduled start to the last
// byte of the answer, so time spent queued anywhere counts. Without RATE: closed loop, VUS clients
// each sending their next request when the last one is answered (the capacity probe).
// Body i of BODIES (a JSON list of strings) goes with iteration i, round robin.
import exec from 'k6/execution';
import http from 'k6/http';
import { SharedArray } from 'k6/data';
import { Trend } from 'k6/metrics';

const bodies = new SharedArray('bodies', () => JSON.parse(open(__ENV.BODIES)));
const fromSchedule = new Trend('from_schedule', true);
const startLag = new Trend('start_lag', true); // Date.now() has 1 ms steps: lags under 1 ms read as 0
const rate = Number(__ENV.RATE || 0);
const vus = Number(__ENV.VUS);
const load = rate
  ? { executor: 'constant-arrival-rate', rate: rate, timeUnit: '1s', duration: `${__ENV.SECONDS}s`,
      preAllocatedVUs: vus, maxVUs: vus, gracefulStop: '15s' }
  : { executor: 'constant-vus', vus: vus, duration: `${__ENV.SECONDS}s`, gracefulStop: '15s' };

export const options = {
  scenarios: { load: load },
  discardResponseBodies: true,
  systemTags: ['status'],
  summaryTrendStats: ['med', 'p(99)', 'count'],
};

export default function () {
  const i = exec.scenario.iterationInTest;
  const lag = rate ? Math.max(0, Date.now() - (exec.scenario.startTime + (i * 1000) / rate)) : 0;
  const res = http.post(__ENV.URL, bodies[i % bodies.length],
                        { headers: { 'Content-Type': 'application/json' }, timeout: '15s' });
  const t = res.timings;
  fromSchedule.add(lag + t.blocked + t.connecting + t.duration, { status: String(res.status) });
  startLag.add(lag);
}
