/**
 * The TypeScript client against a live server. The cross-language test tier starts the server
 * and sets RECKON_TEST_TARGET / RECKON_TEST_ADMIN_KEY; without them there is nothing to test
 * against, so the suite fails instead of passing vacuously.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

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
