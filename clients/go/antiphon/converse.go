package antiphon

import (
	"context"
	"io"
	"sync"

	pb "github.com/antiphon/antiphon/clients/go/antiphonv1"
)

// Conversation is an open Converse stream: write with Say, Audio or Write (a send goroutine does
// the writing), read Events until it closes, then Err tells how the stream ended.
type Conversation struct {
	// Events delivers every server event in order; closed when the stream ends.
	Events <-chan *pb.ServerEvent
	// Started is the session_started event.
	Started *pb.SessionStarted

	stream pb.Conversation_ConverseClient
	in     chan *pb.ClientEvent
	done   chan struct{}
	once   sync.Once
	mu     sync.Mutex
	err    error
}

// Converse opens a stream with config and waits for session_started.
func (c *Client) Converse(ctx context.Context, config *pb.SessionConfig) (*Conversation, error) {
	stream, err := c.Conversation.Converse(ctx)
	if err != nil {
		return nil, AsError(err)
	}
	first := &pb.ClientEvent{Event: &pb.ClientEvent_SessionConfig{SessionConfig: config}}
	if err := stream.Send(first); err != nil && err != io.EOF {
		return nil, AsError(err)
	}
	started, err := stream.Recv()
	if err != nil {
		return nil, AsError(err)
	}
	events := make(chan *pb.ServerEvent, 256)
	conv := &Conversation{
		Events: events, Started: started.GetSessionStarted(), stream: stream,
		in: make(chan *pb.ClientEvent, 64), done: make(chan struct{}),
	}
	go conv.write()
	go conv.read(events)
	return conv, nil
}

func (c *Conversation) write() {
	for event := range c.in {
		if err := c.stream.Send(event); err != nil {
			break // the stream ended: its status comes from the reader
		}
	}
	_ = c.stream.CloseSend()
	for range c.in { // drop what was queued after the end
	}
}

func (c *Conversation) read(events chan<- *pb.ServerEvent) {
	defer close(events)
	defer close(c.done)
	for {
		event, err := c.stream.Recv()
		if err == io.EOF {
			return
		}
		if err != nil {
			converted := AsError(err)
			if e, ok := converted.(*Error); ok && e.RetryAfter == 0 {
				e.RetryAfter = retryAfterTrailer(c.stream.Trailer())
			}
			c.mu.Lock()
			c.err = converted
			c.mu.Unlock()
			return
		}
		events <- event
	}
}

// Write queues an event for the send goroutine; false once the input was ended.
func (c *Conversation) Write(event *pb.ClientEvent) (ok bool) {
	defer func() {
		if recover() != nil { // queued after End: the channel is closed
			ok = false
		}
	}()
	c.in <- event
	return true
}

// Say sends user text.
func (c *Conversation) Say(text string) bool {
	return c.Write(&pb.ClientEvent{Event: &pb.ClientEvent_Text{Text: &pb.TextInput{Content: text}}})
}

// Audio sends one chunk of audio in the session's input format.
func (c *Conversation) Audio(data []byte, seq uint64) bool {
	return c.Write(&pb.ClientEvent{Event: &pb.ClientEvent_Audio{Audio: &pb.AudioChunk{Data: data, Seq: seq}}})
}

// End says no more input comes (EndOfInput, then half-close); pending turns still finish.
func (c *Conversation) End() {
	c.once.Do(func() {
		c.in <- &pb.ClientEvent{Event: &pb.ClientEvent_EndOfInput{EndOfInput: &pb.EndOfInput{}}}
		close(c.in)
	})
}

// Err is how the stream ended (nil for OK); valid once Events is closed.
func (c *Conversation) Err() error {
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
