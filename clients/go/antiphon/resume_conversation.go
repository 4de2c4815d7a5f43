package antiphon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"sync"
	"time"

	pb "github.com/antiphon/antiphon/clients/go/antiphonv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// ErrEnded is returned by Turn once the conversation's input was ended or its stream is over.
var ErrEnded = errors.New("antiphon: the conversation has ended")

var endOfInput = &pb.ClientEvent{Event: &pb.ClientEvent_EndOfInput{EndOfInput: &pb.EndOfInput{}}}

// A server event and the stream it came from: 0 the first, n after n reconnects.
type delivered struct {
	event *pb.ServerEvent
	gen   int
}

type outgoing struct {
	event *pb.ClientEvent
	end   bool
	sent  chan<- int // when set, told the stream the event was written to
}

// ResumingConversation is Conversation's interface over streams that are replaced as they break:
// when a stream ends UNAVAILABLE or reset (its worker drained or died), a new one is opened with
// the same session id, with capped backoff. One goroutine reads and replaces the stream, so a break
// is resumed once; another writes, and writes again on the new stream what the old one refused.
// A turn in flight when the stream broke is never re-sent: Turn returns a *TurnLostError.
type ResumingConversation struct {
	ctx    context.Context
	cancel context.CancelFunc
	client *Client
	config *pb.SessionConfig
	policy Reconnect
	in     chan outgoing
	events chan delivered
	done   chan struct{} // closed when the reader has ended (err set)

	inMu  sync.Mutex // orders queueing against End
	ended bool

	mu           sync.Mutex
	stream       pb.Conversation_ConverseClient
	cancelStream context.CancelFunc
	swapped      chan struct{} // closed when the stream is replaced
	started      *pb.SessionStarted
	reconnects   int
	resumes      []time.Duration
	unanswered   []string
	err          error
}

// ResumeOption configures ResumingConverse.
type ResumeOption func(*ResumingConversation)

// WithReconnect replaces DefaultReconnect().
func WithReconnect(policy Reconnect) ResumeOption {
	return func(c *ResumingConversation) { c.policy = policy }
}

// ResumingConverse opens a Converse stream with config and waits for session_started; later
// streams reuse the session id it assigned. FAILED_PRECONDITION if another live stream holds it.
func (c *Client) ResumingConverse(ctx context.Context, config *pb.SessionConfig, opts ...ResumeOption) (*ResumingConversation, error) {
	ctx, cancel := context.WithCancel(ctx)
	conv := &ResumingConversation{
		ctx: ctx, cancel: cancel, client: c, config: proto.Clone(config).(*pb.SessionConfig),
		policy: DefaultReconnect(), in: make(chan outgoing, 64), events: make(chan delivered, 256),
		done: make(chan struct{}), swapped: make(chan struct{}),
	}
	for _, opt := range opts {
		opt(conv)
	}
	stream, started, cancelStream, err := conv.open()
	if err != nil {
		cancel()
		return nil, AsError(err)
	}
	conv.stream, conv.started, conv.cancelStream = stream, started, cancelStream
	conv.config.SessionId = started.SessionId
	go conv.read()
	go conv.write()
	return conv, nil
}

// open starts one stream on the session and reads its session_started (a refusal's status is the error).
func (c *ResumingConversation) open() (pb.Conversation_ConverseClient, *pb.SessionStarted, context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(c.ctx)
	stream, err := c.client.Conversation.Converse(ctx)
	if err == nil {
		err = stream.Send(&pb.ClientEvent{Event: &pb.ClientEvent_SessionConfig{SessionConfig: c.config}})
		if err == io.EOF {
			err = nil // the stream already ended: Recv says why
		}
	}
	var first *pb.ServerEvent
	if err == nil {
		first, err = stream.Recv()
	}
	if err == nil && first.GetSessionStarted() == nil {
		err = fmt.Errorf("antiphon: the session did not start (first event %T)", first.GetEvent())
	}
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return stream, first.GetSessionStarted(), cancel, nil
}

func (c *ResumingConversation) current() (pb.Conversation_ConverseClient, chan struct{}, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stream, c.swapped, c.reconnects
}

func (c *ResumingConversation) read() {
	defer close(c.events)
	defer close(c.done)
	defer c.cancel()
	stream, _, gen := c.current()
	for {
		event, err := stream.Recv()
		switch {
		case err == io.EOF:
			return
		case err != nil && IsReconnectable(err) && c.ctx.Err() == nil:
			if err := c.resume(err); err != nil {
				c.fail(err)
				return
			}
			var started *pb.SessionStarted
			c.mu.Lock()
			stream, started, gen = c.stream, c.started, c.reconnects
			c.mu.Unlock()
			event = &pb.ServerEvent{Event: &pb.ServerEvent_SessionStarted{SessionStarted: started}}
		case err != nil:
			c.fail(AsError(err))
			return
		case event.GetTurnEnd() != nil:
			c.mu.Lock()
			if len(c.unanswered) > 0 {
				c.unanswered = c.unanswered[1:]
			}
			c.mu.Unlock()
		}
		select {
		case c.events <- delivered{event, gen}:
		case <-c.ctx.Done():
			c.fail(c.ctx.Err())
			return
		}
	}
}

func (c *ResumingConversation) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
}

// resume replaces the broken stream, or returns why it could not.
func (c *ResumingConversation) resume(cause error) error {
	began := time.Now()
	deadline := began.Add(c.policy.ResumeWindow)
	last := cause
	for attempt := 0; attempt < c.policy.MaxAttempts; attempt++ {
		timer := time.NewTimer(c.policy.Delay(attempt, rand.Float64))
		select {
		case <-timer.C:
		case <-c.ctx.Done():
			timer.Stop()
			return c.ctx.Err()
		}
		stream, started, cancel, err := c.open()
		if err != nil {
			last = err
			held := status.Code(err) == codes.FailedPrecondition && time.Now().Before(deadline)
			if held || IsReconnectable(err) {
				continue
			}
			return AsError(err)
		}
		c.mu.Lock()
		c.cancelStream() // the old stream's transport state
		c.stream, c.started, c.cancelStream = stream, started, cancel
		c.reconnects++
		c.resumes = append(c.resumes, time.Since(began))
		close(c.swapped)
		c.swapped = make(chan struct{})
		c.mu.Unlock()
		return nil
	}
	return AsError(last)
}

func (c *ResumingConversation) write() {
	for {
		select {
		case out := <-c.in:
			if out.end {
				c.endEachStream()
				return
			}
			if !c.send(out.event, out.sent) {
				return
			}
		case <-c.done:
			return
		}
	}
}

// send writes event to the current stream, and to its replacement if the write fails; false once
// the conversation is over.
func (c *ResumingConversation) send(event *pb.ClientEvent, sent chan<- int) bool {
	for {
		stream, swapped, gen := c.current()
		if stream.Send(event) == nil {
			if sent != nil {
				sent <- gen
			}
			return true
		}
		select { // the stream ended: the reader replaces it or ends the conversation
		case <-swapped:
		case <-c.done:
			return false
		}
	}
}

// endEachStream ends the input of the current stream, and of any stream resumed afterwards, so
// that the server still finishes the pending turn and closes.
func (c *ResumingConversation) endEachStream() {
	stream, swapped, _ := c.current()
	_ = stream.Send(endOfInput)
	for {
		_ = stream.CloseSend()
		select {
		case <-swapped:
		case <-c.done:
			return
		}
		stream, swapped, _ = c.current()
		_ = stream.Send(endOfInput) // refused if it broke too: the next swap comes here again
	}
}

func (c *ResumingConversation) queue(out outgoing) bool {
	c.inMu.Lock()
	defer c.inMu.Unlock()
	if c.ended {
		return false
	}
	c.ended = out.end
	select {
	case <-c.done: // checked first: the queue may have room after the end
		return false
	default:
	}
	select {
	case c.in <- out:
		return true
	case <-c.done:
		return false
	}
}

// Write queues any client event; false once the input was ended or the conversation is over.
func (c *ResumingConversation) Write(event *pb.ClientEvent) bool {
	return c.queue(outgoing{event: event})
}

// Say sends user text; until its turn_end arrives it is listed in Unanswered.
func (c *ResumingConversation) Say(text string) bool { return c.say(text, nil) }

func (c *ResumingConversation) say(text string, sent chan<- int) bool {
	c.mu.Lock()
	c.unanswered = append(c.unanswered, text) // before the write: its turn_end may come at once
	c.mu.Unlock()
	event := &pb.ClientEvent{Event: &pb.ClientEvent_Text{Text: &pb.TextInput{Content: text}}}
	if c.queue(outgoing{event: event, sent: sent}) {
		return true
	}
	c.mu.Lock()
	c.unanswered = c.unanswered[:len(c.unanswered)-1]
	c.mu.Unlock()
	return false
}

// Interrupt cancels the turn in progress; the session goes on.
func (c *ResumingConversation) Interrupt() bool {
	return c.Write(&pb.ClientEvent{Event: &pb.ClientEvent_Interrupt{Interrupt: &pb.Interrupt{}}})
}

// End says no more input comes (EndOfInput, then half-close); pending turns still finish.
func (c *ResumingConversation) End() { c.queue(outgoing{end: true}) }

// Cancel ends the conversation at once.
func (c *ResumingConversation) Cancel() { c.cancel() }

// Recv returns the next event of whichever stream is current; after a resume, the new stream's
// session_started comes first. io.EOF once the server ended the conversation, else its error.
func (c *ResumingConversation) Recv(ctx context.Context) (*pb.ServerEvent, error) {
	d, err := c.next(ctx)
	return d.event, err
}

func (c *ResumingConversation) next(ctx context.Context) (delivered, error) {
	select {
	case d, ok := <-c.events:
		if !ok {
			if err := c.Err(); err != nil {
				return delivered{}, err
			}
			return delivered{}, io.EOF
		}
		return d, nil
	case <-ctx.Done():
		return delivered{}, ctx.Err()
	}
}

// Turn says text and collects its answer until its turn_end; a *TurnLostError if the stream broke
// before that, ErrEnded if the conversation is over.
func (c *ResumingConversation) Turn(ctx context.Context, text string) (*TurnResult, error) {
	sent := make(chan int, 1)
	if !c.say(text, sent) {
		return nil, c.endErr()
	}
	var sentOn int // a resume before the write carried the text to the new stream
	select {
	case sentOn = <-sent:
	case <-c.done:
		return nil, c.endErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	result := &TurnResult{}
	var answer strings.Builder
	for {
		d, err := c.next(ctx)
		if err == io.EOF {
			return nil, c.endErr()
		} else if err != nil {
			return nil, err
		}
		switch event := d.event.GetEvent().(type) {
		case *pb.ServerEvent_SessionStarted:
			if d.gen <= sentOn {
				continue
			}
			// Resumed after the text was written: its answer will not come. The server keeps the
			// lost turn's first 2000 characters.
			lost := event.SessionStarted.GetLostTurn()
			c.mu.Lock()
			c.unanswered = nil
			c.mu.Unlock()
			return nil, &TurnLostError{Text: text, Reported: lost != "" && strings.HasPrefix(text, lost)}
		case *pb.ServerEvent_AgentText:
			answer.WriteString(event.AgentText.GetDelta())
		case *pb.ServerEvent_Error:
			result.Errors = append(result.Errors, event.Error)
		case *pb.ServerEvent_TurnEnd:
			result.TurnID, result.End, result.Text = d.event.GetTurnId(), event.TurnEnd, answer.String()
			return result, nil
		}
	}
}

// SessionID is the session every stream of this conversation opens.
func (c *ResumingConversation) SessionID() string { return c.config.GetSessionId() }

// Started is the latest stream's session_started (LostTurn set after a worker died mid-turn).
func (c *ResumingConversation) Started() *pb.SessionStarted {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started
}

// Reconnects counts the streams replaced so far.
func (c *ResumingConversation) Reconnects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconnects
}

// ResumeTimes is, per resume, the time from the break seen here to the new session_started.
func (c *ResumingConversation) ResumeTimes() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.resumes...)
}

// Unanswered lists the texts said with no turn_end yet (cleared when Turn reports a lost turn).
func (c *ResumingConversation) Unanswered() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.unanswered...)
}

// endErr is why nothing more can be said: the error that ended the conversation, or ErrEnded.
func (c *ResumingConversation) endErr() error {
	if err := c.Err(); err != nil {
		return err
	}
	return ErrEnded
}

// Err is how the conversation ended (nil for OK, or while it goes on).
func (c *ResumingConversation) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
