package reckon

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	reckonv1 "github.com/reckonhq/reckon/generated/go/reckon/v1"
)

func TestAsErrorDecodesReasonViolationsAndRetry(t *testing.T) {
	st, err := status.New(codes.Unavailable, "storage is unavailable").WithDetails(
		&errdetails.ErrorInfo{Reason: "REPORT_FAILED", Domain: "reckon",
			Metadata: map[string]string{"recovery": "transient"}},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "outcome.status", Description: "required"}}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
	)
	if err != nil {
		t.Fatal(err)
	}
	decoded, ok := AsError(st.Err())
	if !ok {
		t.Fatal("not decoded")
	}
	if decoded.Reason != reckonv1.ErrorReason_ERROR_REASON_REPORT_FAILED || !decoded.Transient() ||
		decoded.RetryAfter != 1500*time.Millisecond || len(decoded.Violations) != 1 {
		t.Fatalf("decoded wrongly: %+v", decoded)
	}
}

func TestAsErrorIgnoresForeignErrors(t *testing.T) {
	if _, ok := AsError(status.Error(codes.Internal, "boom")); ok {
		t.Fatal("an error without reckon ErrorInfo was decoded")
	}
}

// liveServer returns the target and admin key of the server started by the cross-language
// test tier. Run standalone, there is no server: the test says so and stops.
func liveServer(t *testing.T) (string, string) {
	target, key := os.Getenv("RECKON_TEST_TARGET"), os.Getenv("RECKON_TEST_ADMIN_KEY")
	if target == "" || key == "" {
		t.Skip("RECKON_TEST_TARGET/RECKON_TEST_ADMIN_KEY unset: run through tests/cross")
	}
	return target, key
}

func TestLiveUnknownKeyIsUnauthenticated(t *testing.T) {
	target, _ := liveServer(t)
	client, err := New(target, "rk_unknown")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.Admin.ListAgents(ctx, &reckonv1.ListAgentsRequest{})
	decoded, ok := AsError(err)
	if !ok || decoded.Code != codes.Unauthenticated ||
		decoded.Reason != reckonv1.ErrorReason_ERROR_REASON_UNAUTHENTICATED {
		t.Fatalf("want UNAUTHENTICATED, got %v", err)
	}
}

const micros = 1_000_000

// report is one day's delivery of March 2026 (the test plan's flight starts on the 15th).
func report(planID, mediaBuyID string, day int, spendMicros int64) *reckonv1.PlanDelivery {
	midnight := func(d int) *timestamppb.Timestamp {
		return timestamppb.New(time.Date(2026, time.March, d, 0, 0, 0, 0, time.UTC))
	}
	return &reckonv1.PlanDelivery{
		PlanId: planID,
		Delivery: &reckonv1.DeliveryReport{
			MediaBuyId:      mediaBuyID,
			ReportingPeriod: &reckonv1.ReportingPeriod{Start: midnight(day), End: midnight(day + 1)},
			SpendMicros:     spendMicros,
			Impressions:     10_000,
		},
	}
}

// liveBuyer returns a client of the live server's buyer, and the plan and media buy it committed.
func liveBuyer(t *testing.T) (*Client, string, string) {
	target, _ := liveServer(t)
	buyerKey := os.Getenv("RECKON_TEST_BUYER_KEY")
	if buyerKey == "" {
		t.Fatal("RECKON_TEST_BUYER_KEY is not set")
	}
	client, err := New(target, buyerKey)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client, os.Getenv("RECKON_TEST_PLAN_ID"), os.Getenv("RECKON_TEST_MEDIA_BUY_ID")
}

func TestLiveStreamDeliveryAcksEachBatchWithAResultPerReport(t *testing.T) {
	client, planID, mediaBuyID := liveBuyer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := client.Delivery.StreamDelivery(ctx)
	if err != nil {
		t.Fatal(err)
	}
	exchange := func(request *reckonv1.StreamDeliveryRequest) *reckonv1.StreamDeliveryResponse {
		t.Helper()
		if err := stream.Send(request); err != nil {
			t.Fatal(err)
		}
		response, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return response
	}
	batch := func(seq int64, reports ...*reckonv1.PlanDelivery) *reckonv1.StreamDeliveryRequest {
		return &reckonv1.StreamDeliveryRequest{Kind: &reckonv1.StreamDeliveryRequest_Batch{
			Batch: &reckonv1.DeliveryBatch{Seq: seq, Reports: reports}}}
	}

	opened := exchange(&reckonv1.StreamDeliveryRequest{Kind: &reckonv1.StreamDeliveryRequest_Open{
		Open: &reckonv1.StreamOpen{StreamId: "go-producer"}}}).GetOpened()
	if opened.GetNextSeq() != 1 || opened.GetMaxBatchReports() != 1000 {
		t.Fatalf("opened wrongly: %v", opened)
	}
	first := batch(1, report(planID, mediaBuyID, 15, 1_000*micros), report(planID, mediaBuyID, 16, -1))
	ack := exchange(first).GetAck()
	if ack.GetDisposition() != reckonv1.BatchDisposition_BATCH_DISPOSITION_COMMITTED ||
		len(ack.GetResults()) != 2 ||
		!strings.HasPrefix(ack.GetResults()[0].GetAccepted().GetOutcomeId(), "out_") {
		t.Fatalf("want the first report accepted, got %v", ack)
	}
	refused, ok := FromStatus(ack.GetResults()[1].GetError())
	if !ok || refused.Code != codes.InvalidArgument || len(refused.Violations) != 1 ||
		refused.Violations[0].GetField() != "reports[1].delivery.spend_micros" {
		t.Fatalf("want the second report refused for its spend, got %+v", refused)
	}
	// Already committed: acknowledged, not applied again.
	if d := exchange(first).GetAck().GetDisposition(); d != reckonv1.BatchDisposition_BATCH_DISPOSITION_DUPLICATE {
		t.Fatalf("want DUPLICATE, got %v", d)
	}
	gap := exchange(batch(3, report(planID, mediaBuyID, 17, micros))).GetAck()
	decoded, ok := FromStatus(gap.GetError())
	if gap.GetDisposition() != reckonv1.BatchDisposition_BATCH_DISPOSITION_REJECTED ||
		gap.GetNextSeq() != 2 || !ok ||
		decoded.Reason != reckonv1.ErrorReason_ERROR_REASON_SEQUENCE_GAP {
		t.Fatalf("want the gap rejected, got %v", gap)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("want the stream to end cleanly, got %v", err)
	}
}

func TestLiveWatchPlanSendsASnapshotThenAStreamedReport(t *testing.T) {
	client, planID, mediaBuyID := liveBuyer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watch, err := client.Delivery.WatchPlan(ctx, &reckonv1.WatchPlanRequest{PlanId: planID})
	if err != nil {
		t.Fatal(err)
	}
	snapshot, err := watch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if snapshot.GetEvent().GetType() != reckonv1.PlanEventType_PLAN_EVENT_TYPE_SNAPSHOT ||
		snapshot.GetEvent().GetState().GetCommittedMicros() <= 0 {
		t.Fatalf("want a snapshot of a committed plan first, got %v", snapshot)
	}

	stream, err := client.Delivery.StreamDelivery(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, request := range []*reckonv1.StreamDeliveryRequest{
		{Kind: &reckonv1.StreamDeliveryRequest_Open{Open: &reckonv1.StreamOpen{StreamId: "go-watched"}}},
		{Kind: &reckonv1.StreamDeliveryRequest_Batch{Batch: &reckonv1.DeliveryBatch{
			// The figures the StreamDelivery test reports for this day: the plan's spend stays.
			Seq: 1, Reports: []*reckonv1.PlanDelivery{report(planID, mediaBuyID, 15, 1_000*micros)}}}},
	} {
		if err := stream.Send(request); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stream.Recv(); err != nil { // opened
		t.Fatal(err)
	}
	ack, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	outcomeID := ack.GetAck().GetResults()[0].GetAccepted().GetOutcomeId()
	if outcomeID == "" {
		t.Fatalf("want the report accepted, got %v", ack)
	}
	for {
		response, err := watch.Recv()
		if err != nil {
			t.Fatalf("the watcher ended before the report's event: %v", err)
		}
		if event := response.GetEvent(); event.GetOutcomeId() == outcomeID {
			if event.GetType() != reckonv1.PlanEventType_PLAN_EVENT_TYPE_DELIVERY {
				t.Fatalf("want a DELIVERY event, got %v", event)
			}
			break
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
}
