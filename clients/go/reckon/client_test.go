package reckon

import (
	"context"
	"os"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

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
