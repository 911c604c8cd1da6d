// Package reckon is the Go client of Reckon: the generated gRPC stubs over one connection that
// attaches the API key to every call, plus typed decoding of Reckon's rich errors.
package reckon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	reckonv1 "github.com/reckonhq/reckon/generated/go/reckon/v1"
)

// Client holds one connection and a stub per service.
type Client struct {
	conn       *grpc.ClientConn
	Audit      reckonv1.AuditServiceClient
	Admin      reckonv1.AdminServiceClient
	Governance reckonv1.GovernanceServiceClient
	Delivery   reckonv1.DeliveryServiceClient
}

// New connects to target (host:port) with apiKey. Without options the connection is plaintext
// (loopback and trusted networks); pass grpc.WithTransportCredentials for TLS.
func New(target, apiKey string, opts ...grpc.DialOption) (*Client, error) {
	dialOpts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer{key: apiKey, secure: len(opts) > 0}),
	}, opts...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("reckon: connect %s: %w", target, err)
	}
	return &Client{
		conn:       conn,
		Audit:      reckonv1.NewAuditServiceClient(conn),
		Admin:      reckonv1.NewAdminServiceClient(conn),
		Governance: reckonv1.NewGovernanceServiceClient(conn),
		Delivery:   reckonv1.NewDeliveryServiceClient(conn),
	}, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

type bearer struct {
	key    string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.key}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

// Error is a failed Reckon call with its ErrorInfo decoded.
type Error struct {
	Code       codes.Code
	Reason     reckonv1.ErrorReason
	Message    string
	Metadata   map[string]string
	Violations []*errdetails.BadRequest_FieldViolation
	// RetryAfter is the server's suggested wait for transient errors; 0 when none was given.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	return fmt.Sprintf("reckon: %s (%s): %s", e.Code, e.Reason, e.Message)
}

// Transient reports whether the same call may succeed if retried later.
func (e *Error) Transient() bool { return e.Metadata["recovery"] == "transient" }

// FromStatus decodes a google.rpc.Status carried inside a message: a StreamDelivery ack's
// per-report error or a rejected batch's error.
func FromStatus(s *spb.Status) (*Error, bool) {
	return AsError(status.ErrorProto(s))
}

// AsError decodes err into an *Error when it carries Reckon's ErrorInfo.
func AsError(err error) (*Error, bool) {
	var decoded *Error
	if errors.As(err, &decoded) {
		return decoded, true
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	out := &Error{Code: st.Code(), Message: st.Message()}
	found := false
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() != "reckon" {
				continue
			}
			found = true
			out.Reason = reckonv1.ErrorReason(reckonv1.ErrorReason_value["ERROR_REASON_"+d.GetReason()])
			out.Metadata = d.GetMetadata()
		case *errdetails.BadRequest:
			out.Violations = append(out.Violations, d.GetFieldViolations()...)
		case *errdetails.RetryInfo:
			out.RetryAfter = d.GetRetryDelay().AsDuration()
		}
	}
	return out, found
}
