// Package antiphon is a small client for the Antiphon gRPC API: dial with credentials, one text
// turn (Send), a Converse stream with a send goroutine and an event channel, and typed errors.
// The generated messages and stubs are in package antiphonv1.
package antiphon

import (
	"context"
	"fmt"
	"strconv"
	"time"

	pb "github.com/antiphon/antiphon/clients/go/antiphonv1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Client holds one connection; its stubs are safe for concurrent use.
type Client struct {
	conn         *grpc.ClientConn
	Conversation pb.ConversationClient
	Context      pb.ContextClient
	Tools        pb.ToolsClient
	Admin        pb.AdminClient
	health       healthpb.HealthClient
}

// Option configures Dial.
type Option func(*options)

type options struct {
	header   map[string]string
	dialOpts []grpc.DialOption
}

// WithAPIKey sends the key as x-api-key with every call.
func WithAPIKey(key string) Option { return func(o *options) { o.header["x-api-key"] = key } }

// WithToken sends a JWT as "authorization: Bearer <token>" with every call.
func WithToken(token string) Option {
	return func(o *options) { o.header["authorization"] = "Bearer " + token }
}

// WithDialOptions passes options to grpc.Dial (TLS credentials, for example; the default is plaintext).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// headerCredentials adds fixed metadata to every call.
type headerCredentials struct {
	header map[string]string
	secure bool
}

func (c headerCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return c.header, nil
}

func (c headerCredentials) RequireTransportSecurity() bool { return c.secure }

// Dial connects to address ("host:port"); the connection is made lazily, as grpc.Dial does.
func Dial(address string, opts ...Option) (*Client, error) {
	o := options{header: map[string]string{}}
	for _, opt := range opts {
		opt(&o)
	}
	dialOpts := o.dialOpts
	if len(dialOpts) == 0 {
		dialOpts = []grpc.DialOption{grpc.WithInsecure()}
	}
	if len(o.header) > 0 {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(headerCredentials{header: o.header}))
	}
	conn, err := grpc.Dial(address, dialOpts...)
	if err != nil {
		return nil, err
	}
	return &Client{
		conn:         conn,
		Conversation: pb.NewConversationClient(conn),
		Context:      pb.NewContextClient(conn),
		Tools:        pb.NewToolsClient(conn),
		Admin:        pb.NewAdminClient(conn),
		health:       healthpb.NewHealthClient(conn),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Serving reports whether the server's health service says SERVING.
func (c *Client) Serving(ctx context.Context) (bool, error) {
	reply, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return false, AsError(err)
	}
	return reply.Status == healthpb.HealthCheckResponse_SERVING, nil
}

// Events reads the server events of one Send.
type Events struct {
	stream pb.Conversation_SendClient
}

// Next returns the next event, or io.EOF after the last one (or an *Error).
func (e *Events) Next() (*pb.ServerEvent, error) {
	event, err := e.stream.Recv()
	if err != nil {
		return nil, AsError(err)
	}
	return event, nil
}

// Send runs one text turn; read its events with Next until io.EOF.
func (c *Client) Send(ctx context.Context, request *pb.TextRequest) (*Events, error) {
	stream, err := c.Conversation.Send(ctx, request)
	if err != nil {
		return nil, AsError(err)
	}
	return &Events{stream: stream}, nil
}

// Error is a failed call's status, with the delay the server asks for before a retry (RetryInfo).
type Error struct {
	Code       codes.Code
	Message    string
	RetryAfter time.Duration // 0 when the server gave none
	err        error
}

func (e *Error) Error() string { return fmt.Sprintf("antiphon: %s: %s", e.Code, e.Message) }

// Unwrap gives the underlying gRPC status error.
func (e *Error) Unwrap() error { return e.err }

// Retryable tells whether the same call may succeed later (the statuses the API documents as retryable).
func (e *Error) Retryable() bool {
	return e.Code == codes.Unavailable || e.Code == codes.ResourceExhausted
}

// AsError turns a gRPC error into an *Error (other errors, io.EOF included, are returned as they are).
func AsError(err error) error {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return err
	}
	out := &Error{Code: st.Code(), Message: st.Message(), err: err}
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok && info.RetryDelay != nil {
			out.RetryAfter = info.RetryDelay.AsDuration()
		}
	}
	return out
}

// retryAfterTrailer reads the plain retry-after-ms trailer (for clients that cannot parse RetryInfo).
func retryAfterTrailer(md metadata.MD) time.Duration {
	values := md.Get("retry-after-ms")
	if len(values) == 0 {
		return 0
	}
	ms, err := strconv.ParseFloat(values[0], 64)
	if err != nil {
		return 0
	}
	return time.Duration(ms * float64(time.Millisecond))
}
