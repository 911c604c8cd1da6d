/**
 * The TypeScript client against a live server. The cross-language test tier starts the server
 * and sets RECKON_TEST_TARGET / RECKON_TEST_ADMIN_KEY; without them there is nothing to test
 * against, so the suite fails instead of passing vacuously.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import type { MessageInitShape } from "@bufbuild/protobuf";

import {
  BatchDisposition,
  PlanEventType,
  type PlanDeliverySchema,
} from "../../../generated/ts/reckon/v1/delivery_service_pb.js";
import { Code, createReckonClient, ErrorReason, fromMicros, ReckonError, toMicros } from "../src/index.js";

const target = process.env["RECKON_TEST_TARGET"];
const adminKey = process.env["RECKON_TEST_ADMIN_KEY"];

test("money converts exactly between decimal strings and micros", () => {
  assert.equal(toMicros("150000"), 150_000_000_000n);
  assert.equal(toMicros("0.000001"), 1n);
  assert.equal(toMicros("-12.5"), -12_500_000n);
  assert.equal(fromMicros(150_000_250_000n), "150000.25");
  assert.equal(fromMicros(-1n), "-0.000001");
  assert.throws(() => toMicros("1.0000001"), RangeError);
});

test("a live server is configured", () => {
  assert.ok(target, "RECKON_TEST_TARGET is not set");
  assert.ok(adminKey, "RECKON_TEST_ADMIN_KEY is not set");
});

test("an unknown key is rejected with a decoded UNAUTHENTICATED reason", async () => {
  const client = createReckonClient({ baseUrl: `http://${target}`, apiKey: "rk_unknown" });
  await assert.rejects(client.admin.listAgents({}), (error: unknown) => {
    const decoded = ReckonError.from(error);
    assert.ok(decoded, "error carries no reckon ErrorInfo");
    assert.equal(decoded.code, Code.Unauthenticated);
    assert.equal(decoded.reason, ErrorReason.UNAUTHENTICATED);
    assert.equal(decoded.metadata["recovery"], "correctable");
    return true;
  });
});

const buyerKey = process.env["RECKON_TEST_BUYER_KEY"];
const planId = process.env["RECKON_TEST_PLAN_ID"] ?? "";
const mediaBuyId = process.env["RECKON_TEST_MEDIA_BUY_ID"] ?? "";
const M = 1_000_000n;

/** One day's delivery of March 2026 (the test plan's flight starts on the 15th). */
function report(day: number, spendMicros: bigint): MessageInitShape<typeof PlanDeliverySchema> {
  const midnight = (d: number) => ({ seconds: BigInt(Date.UTC(2026, 2, d) / 1000), nanos: 0 });
  return {
    planId,
    delivery: {
      mediaBuyId,
      reportingPeriod: { start: midnight(day), end: midnight(day + 1) },
      spendMicros,
      impressions: 10_000n,
    },
  };
}

test("StreamDelivery acks each batch in order, with a result per report", async () => {
  assert.ok(buyerKey, "RECKON_TEST_BUYER_KEY is not set");
  const client = createReckonClient({ baseUrl: `http://${target}`, apiKey: buyerKey });
  const batch = (seq: bigint, reports: MessageInitShape<typeof PlanDeliverySchema>[]) => ({
    kind: { case: "batch" as const, value: { seq, reports } },
  });
  async function* requests() {
    yield { kind: { case: "open" as const, value: { streamId: "ts-producer" } } };
    const first = [report(15, 1_000n * M), report(16, -1n)];
    yield batch(1n, first);
    yield batch(1n, first); // already committed: acknowledged, not applied again
    yield batch(3n, [report(17, M)]); // skips seq 2
  }
  const responses = [];
  for await (const response of client.delivery.streamDelivery(requests())) {
    responses.push(response);
  }
  assert.equal(responses.length, 4);
  const [opened, committed, duplicate, gap] = responses.map((r) => r.kind);
  assert.equal(opened?.case, "opened");
  assert.equal(opened.value.nextSeq, 1n);
  assert.equal(committed?.case, "ack");
  assert.equal(committed.value.disposition, BatchDisposition.COMMITTED);
  const [accepted, refused] = committed.value.results.map((r) => r.result);
  assert.equal(accepted?.case, "accepted");
  assert.match(accepted.value.outcomeId, /^out_/);
  assert.equal(refused?.case, "error");
  const error = ReckonError.fromStatus(refused.value);
  assert.ok(error, "the per-report error carries no reckon ErrorInfo");
  assert.equal(error.code, Code.InvalidArgument);
  assert.deepEqual(
    error.violations.map((v) => v.field),
    ["reports[1].delivery.spend_micros"],
  );
  assert.equal(duplicate?.case, "ack");
  assert.equal(duplicate.value.disposition, BatchDisposition.DUPLICATE);
  assert.equal(gap?.case, "ack");
  assert.equal(gap.value.disposition, BatchDisposition.REJECTED);
  assert.equal(gap.value.nextSeq, 2n);
  assert.ok(gap.value.error, "a rejected batch carries its status");
  assert.equal(ReckonError.fromStatus(gap.value.error)?.reason, ErrorReason.SEQUENCE_GAP);
});

test(
  "WatchPlan sends a snapshot, then the event of a report streamed meanwhile",
  { timeout: 30_000 },
  async () => {
    assert.ok(buyerKey, "RECKON_TEST_BUYER_KEY is not set");
    const client = createReckonClient({ baseUrl: `http://${target}`, apiKey: buyerKey });
    const watching = new AbortController();
    const events = client.delivery
      .watchPlan({ planId }, { signal: watching.signal })
      [Symbol.asyncIterator]();
    const snapshot = await events.next();
    assert.equal(snapshot.done, false);
    assert.equal(snapshot.value.event?.type, PlanEventType.SNAPSHOT);
    assert.ok((snapshot.value.event?.state?.committedMicros ?? 0n) > 0n);

    async function* requests() {
      yield { kind: { case: "open" as const, value: { streamId: "ts-watched" } } };
      // The figures the StreamDelivery test reports for this day: the plan's spend stays.
      const batch = { seq: 1n, reports: [report(15, 1_000n * M)] };
      yield { kind: { case: "batch" as const, value: batch } };
    }
    let outcomeId = "";
    for await (const response of client.delivery.streamDelivery(requests())) {
      if (response.kind.case === "ack") {
        const [result] = response.kind.value.results;
        assert.equal(result?.result.case, "accepted");
        outcomeId = result.result.value.outcomeId;
      }
    }
    assert.match(outcomeId, /^out_/);
    for (;;) {
      const next = await events.next();
      assert.equal(next.done, false, "the watcher ended before the report's event");
      if (next.value.event?.outcomeId === outcomeId) {
        assert.equal(next.value.event.type, PlanEventType.DELIVERY);
        break;
      }
    }
    watching.abort();
  },
);
