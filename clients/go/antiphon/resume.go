package antiphon

// What a ResumingConversation reconnects on, how long it waits between attempts, and what it
// reports when a turn was cut off (the conversation itself is in resume_conversation.go).

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	pb "github.com/antiphon/antiphon/clients/go/antiphonv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// resetWords are what a worker that died looks like from the client: through Envoy, or on a
// direct connection (grpc-go says "stream terminated by RST_STREAM with error code: ...").
var resetWords = []string{"rst_stream", "reset", "stream removed", "socket closed", "connection termination"}

// Reconnect is how a ResumingConversation reconnects. The delay before attempt n (from 0) is
// min(MaxBackoff, InitialBackoff*Multiplier^n), less up to Jitter of itself, so clients cut off
// together do not come back together.
type Reconnect struct {
	MaxAttempts    int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
	Jitter         float64
	// FAILED_PRECONDITION (the session is held) is retried this long after a break: a dead worker's
	// lease lasts until its heartbeat lapses (2 s). Opening a session held elsewhere fails at once.
	ResumeWindow time.Duration
}

// DefaultReconnect is the Python SDK's policy: 8 attempts from 50 ms, doubling up to 1 s, half jitter.
func DefaultReconnect() Reconnect {
	return Reconnect{
		MaxAttempts:    8,
		InitialBackoff: 50 * time.Millisecond,
		MaxBackoff:     time.Second,
		Multiplier:     2,
		Jitter:         0.5,
		ResumeWindow:   5 * time.Second,
	}
}

// Delay is the wait before attempt n; rand returns a number in [0, 1) (math/rand.Float64).
func (r Reconnect) Delay(attempt int, rand func() float64) time.Duration {
	base := math.Min(float64(r.MaxBackoff), float64(r.InitialBackoff)*math.Pow(r.Multiplier, float64(attempt)))
	return time.Duration(base * (1 - r.Jitter*rand()))
}

// IsReconnectable tells whether a stream that ended with err may be resumed on a new one:
// UNAVAILABLE, or a reset stream (INTERNAL or UNKNOWN naming a reset). err is an *Error or a gRPC
// status error; anything else (io.EOF, a cancelled context) is not.
func IsReconnectable(err error) bool {
	var code codes.Code
	var message string
	var e *Error
	if errors.As(err, &e) {
		code, message = e.Code, e.Message
	} else if st, ok := status.FromError(err); ok && err != nil {
		code, message = st.Code(), st.Message()
	} else {
		return false
	}
	if code == codes.Unavailable {
		return true
	}
	if code != codes.Internal && code != codes.Unknown {
		return false
	}
	message = strings.ToLower(message)
	for _, word := range resetWords {
		if strings.Contains(message, word) {
			return true
		}
	}
	return false
}

// TurnLostError is Turn's error when the stream broke before the turn's answer ended. Reported:
// the resumed session named it as the turn its dead worker was answering (not recorded, not
// re-run); otherwise it had not started, or it ended on the old worker without its answer
// reaching here (GetSession tells). Say it again to have it answered.
type TurnLostError struct {
	Text     string
	Reported bool
}

func (e *TurnLostError) Error() string {
	text := e.Text
	if len(text) > 60 {
		text = text[:60]
	}
	state := "got no answer before the stream broke"
	if e.Reported {
		state = "was lost with its worker and not re-run"
	}
	return fmt.Sprintf("antiphon: the turn %q %s; say it again to have it answered", text, state)
}

// TurnResult is one turn's answer as Turn collected it.
type TurnResult struct {
	TurnID string
	Text   string // the agent_text deltas, joined
	End    *pb.TurnEnd
	Errors []*pb.Error // error events inside the turn (the stream went on)
}
