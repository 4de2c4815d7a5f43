package antiphon_test

// The reconnect policy's delays and which failures it reconnects on; no server needed.

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/antiphon/antiphon/clients/go/antiphon"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestBackoffIsCappedAndJittered(t *testing.T) {
	policy := antiphon.Reconnect{InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.5}
	never, always := func() float64 { return 0 }, func() float64 { return 1 }
	for _, c := range []struct {
		attempt int
		rand    func() float64
		want    time.Duration
	}{
		{0, never, 100 * time.Millisecond},
		{0, always, 50 * time.Millisecond},
		{3, never, 800 * time.Millisecond},
		{10, never, time.Second},
		{10, always, 500 * time.Millisecond},
	} {
		if got := policy.Delay(c.attempt, c.rand); got != c.want {
			t.Errorf("Delay(%d) = %v, want %v", c.attempt, got, c.want)
		}
	}
}

func TestDefaultReconnectIsThePythonSDKs(t *testing.T) {
	want := antiphon.Reconnect{
		MaxAttempts: 8, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		Multiplier: 2, Jitter: 0.5, ResumeWindow: 5 * time.Second,
	}
	if got := antiphon.DefaultReconnect(); got != want {
		t.Fatalf("DefaultReconnect() = %+v", got)
	}
}

func TestWhichFailuresAreReconnectable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{status.Error(codes.Unavailable, "the server is shutting down"), true},
		{status.Error(codes.Internal, "stream terminated by RST_STREAM with error code: INTERNAL_ERROR"), true},
		{status.Error(codes.Unknown, "Stream removed"), true},
		{status.Error(codes.Unavailable, "upstream connect error or disconnect/reset before headers"), true},
		{antiphon.AsError(status.Error(codes.Internal, "Received RST_STREAM with error code 2")), true},
		{status.Error(codes.Internal, "internal error in the turn"), false},
		{status.Error(codes.FailedPrecondition, "held"), false},
		{status.Error(codes.DeadlineExceeded, "deadline"), false},
		{status.Error(codes.Canceled, "context canceled"), false},
		{io.EOF, false},
		{errors.New("connection reset"), false}, // not a gRPC status
		{nil, false},
	} {
		if got := antiphon.IsReconnectable(c.err); got != c.want {
			t.Errorf("IsReconnectable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestTurnLostErrorNamesTheTurn(t *testing.T) {
	err := error(&antiphon.TurnLostError{Text: "tell me a story", Reported: true})
	var lost *antiphon.TurnLostError
	if !errors.As(err, &lost) || lost.Text != "tell me a story" || !lost.Reported {
		t.Fatalf("got %v", err)
	}
}
