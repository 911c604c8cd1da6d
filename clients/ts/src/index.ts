/**
 * Reckon TypeScript client: connect-es over gRPC (HTTP/2), with the API key attached to every
 * call and rich errors decoded into `ReckonError`.
 */
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "../../../generated/ts/google/rpc/error_details_pb.js";
import type { Status } from "../../../generated/ts/google/rpc/status_pb.js";
import { AdminService } from "../../../generated/ts/reckon/v1/admin_service_pb.js";
import { AuditService } from "../../../generated/ts/reckon/v1/audit_service_pb.js";
import { DeliveryService } from "../../../generated/ts/reckon/v1/delivery_service_pb.js";
import { ErrorReason } from "../../../generated/ts/reckon/v1/error_reason_pb.js";
import { GovernanceService } from "../../../generated/ts/reckon/v1/governance_service_pb.js";

export { Code, ErrorReason };

export interface ReckonClientOptions {
  /** Server address, e.g. `http://127.0.0.1:50051`. */
  baseUrl: string;
  /** API key (`rk_...`), sent as `authorization: Bearer <key>`. */
  apiKey: string;
}

export interface ReckonClient {
  audit: Client<typeof AuditService>;
  admin: Client<typeof AdminService>;
  governance: Client<typeof GovernanceService>;
  delivery: Client<typeof DeliveryService>;
}

export function createReckonClient(options: ReckonClientOptions): ReckonClient {
  const bearer: Interceptor = (next) => async (request) => {
    request.header.set("authorization", `Bearer ${options.apiKey}`);
    return next(request);
  };
  const transport = createGrpcTransport({ baseUrl: options.baseUrl, interceptors: [bearer] });
  return {
    audit: createClient(AuditService, transport),
    admin: createClient(AdminService, transport),
    governance: createClient(GovernanceService, transport),
    delivery: createClient(DeliveryService, transport),
  };
}

export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call with its `ErrorInfo` reason decoded, so callers switch on `reason`. */
export class ReckonError extends Error {
  constructor(
    readonly code: Code,
    readonly reason: ErrorReason,
    message: string,
    readonly metadata: Readonly<Record<string, string>>,
    readonly violations: readonly FieldViolation[],
    /** Server-suggested wait before a retry, when the error is transient. */
    readonly retryAfterMs: number | undefined,
  ) {
    super(message);
    this.name = "ReckonError";
  }

  /** True when the same call may succeed if retried later. */
  get transient(): boolean {
    return this.metadata["recovery"] === "transient";
  }

  /**
   * Decodes a `google.rpc.Status` carried inside a message: a StreamDelivery ack's per-report
   * `error` or a rejected batch's `error`.
   */
  static fromStatus(status: Status): ReckonError | undefined {
    const error = new ConnectError(status.message, status.code as Code);
    for (const detail of status.details) {
      // Details arrive as Any; ConnectError finds them by their message type name.
      const type = detail.typeUrl.slice(detail.typeUrl.lastIndexOf("/") + 1);
      error.details.push({ type, value: detail.value });
    }
    return ReckonError.from(error);
  }

  /** Decodes any error thrown by a Reckon call; non-Reckon errors are returned as undefined. */
  static from(error: unknown): ReckonError | undefined {
    const connectError = ConnectError.from(error);
    const [info] = connectError.findDetails(ErrorInfoSchema);
    if (info === undefined || info.domain !== "reckon") {
      return undefined;
    }
    const reason =
      (ErrorReason as unknown as Record<string, ErrorReason>)[info.reason] ??
      ErrorReason.UNSPECIFIED;
    const violations = connectError
      .findDetails(BadRequestSchema)
      .flatMap((bad) => bad.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
    const [retry] = connectError.findDetails(RetryInfoSchema);
    const retryAfterMs =
      retry?.retryDelay === undefined
        ? undefined
        : Number(retry.retryDelay.seconds) * 1000 + retry.retryDelay.nanos / 1e6;
    return new ReckonError(
      connectError.code,
      reason,
      connectError.rawMessage,
      info.metadata,
      violations,
      retryAfterMs,
    );
  }
}

const MICROS_PER_UNIT = 1_000_000n;

/** Exact conversion of a decimal amount string ("150000.25") to micros. */
export function toMicros(amount: string): bigint {
  const match = /^(-?)(\d+)(?:\.(\d{1,6}))?$/.exec(amount.trim());
  if (match === null) {
    throw new RangeError(`not a decimal amount with at most 6 fraction digits: ${amount}`);
  }
  const [, sign, units, fraction = ""] = match;
  const micros = BigInt(units!) * MICROS_PER_UNIT + BigInt(fraction.padEnd(6, "0"));
  return sign === "-" ? -micros : micros;
}

/** Exact decimal string of an amount in micros ("150000.25"). */
export function fromMicros(micros: bigint): string {
  const sign = micros < 0n ? "-" : "";
  const magnitude = micros < 0n ? -micros : micros;
  const units = magnitude / MICROS_PER_UNIT;
  const fraction = (magnitude % MICROS_PER_UNIT).toString().padStart(6, "0").replace(/0+$/, "");
  return `${sign}${units}${fraction ? `.${fraction}` : ""}`;
}
