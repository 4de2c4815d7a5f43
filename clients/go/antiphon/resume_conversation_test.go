package antiphon_test

// ResumingConversation against a scripted in-process server: which breaks it resumes on, with the
// same session id, and what Turn reports (as the Python SDK's tests/unit/test_resume.py).

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/antiphon/antiphon/clients/go/antiphon"
	pb "github.com/antiphon/antiphon/clients/go/antiphonv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var fast = antiphon.Reconnect{
	MaxAttempts: 8, InitialBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
	Multiplier: 2, Jitter: 0.5, ResumeWindow: 2 * time.Second,
}

// step is what one Converse stream does: answer every text ("ok"), answer the first text's start
// and then end with code ("break"), or fail the session's start with code ("refuse").
type step struct {
	kind string
	code codes.Code
}

type scripted struct {
	pb.UnimplementedConversationServer
	mu         sync.Mutex
	steps      []step
	sessionIDs []string
	lostTurn   string
}

func (s *scripted) next(sessionID string) (step, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessionIDs = append(s.sessionIDs, sessionID)
	if len(s.steps) == 0 {
		return step{kind: "ok"}, len(s.sessionIDs)
	}
	next := s.steps[0]
	s.steps = s.steps[1:]
	return next, len(s.sessionIDs)
}

func (s *scripted) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.sessionIDs...)
}

func (s *scripted) Converse(stream pb.Conversation_ConverseServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	sid := first.GetSessionConfig().GetSessionId()
	now, n := s.next(sid)
	if now.kind == "refuse" {
		return status.Error(now.code, "the session is held")
	}
	if sid == "" {
		sid = "assigned"
	}
	started := &pb.SessionStarted{SessionId: sid}
	if n > 1 {
		started.LostTurn = s.lostTurn
	}
	if err := stream.Send(&pb.ServerEvent{Event: &pb.ServerEvent_SessionStarted{SessionStarted: started}}); err != nil {
		return err
	}
	for {
		event, err := stream.Recv()
		if err == io.EOF || event.GetEndOfInput() != nil {
			return nil
		} else if err != nil {
			return err
		}
		part := &pb.ServerEvent{TurnId: "t", Event: &pb.ServerEvent_AgentText{AgentText: &pb.AgentText{Delta: "part"}}}
		if err := stream.Send(part); err != nil {
			return err
		}
		if now.kind == "break" {
			return status.Error(now.code, "Received RST_STREAM with error code 2")
		}
		end := &pb.TurnEnd{Reason: pb.TurnEnd_REASON_COMPLETED}
		if err := stream.Send(&pb.ServerEvent{TurnId: "t", Event: &pb.ServerEvent_TurnEnd{TurnEnd: end}}); err != nil {
			return err
		}
	}
}

func serve(t *testing.T, s *scripted) (*antiphon.Client, context.Context) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	pb.RegisterConversationServer(server, s)
	go func() { _ = server.Serve(listener) }()
	client, err := antiphon.Dial(listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(func() { cancel(); client.Close(); server.Stop() })
	return client, ctx
}

func statusOf(err error) codes.Code {
	var e *antiphon.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return codes.OK
}

// finish ends the input and reads to the end of the conversation.
func finish(t *testing.T, ctx context.Context, conv *antiphon.ResumingConversation) {
	conv.End()
	for {
		if _, err := conv.Recv(ctx); err == io.EOF {
			return
		} else if err != nil {
			t.Fatalf("the conversation ended with %v", err)
		}
	}
}

func TestABrokenStreamResumesOnTheSameSessionAndReportsTheLostTurn(t *testing.T) {
	for _, code := range []codes.Code{codes.Unavailable, codes.Internal} {
		t.Run(code.String(), func(t *testing.T) {
			s := &scripted{steps: []step{{"break", code}}, lostTurn: "tell me a story"}
			client, ctx := serve(t, s)
			conv, err := client.ResumingConverse(ctx, &pb.SessionConfig{}, antiphon.WithReconnect(fast))
			if err != nil {
				t.Fatal(err)
			}
			if conv.SessionID() != "assigned" {
				t.Fatalf("session id %q", conv.SessionID())
			}
			_, err = conv.Turn(ctx, "tell me a story")
			var lost *antiphon.TurnLostError
			if !errors.As(err, &lost) || !lost.Reported || lost.Text != "tell me a story" {
				t.Fatalf("Turn: %v", err)
			}
			if conv.Reconnects() != 1 || conv.Started().GetLostTurn() != "tell me a story" {
				t.Fatalf("reconnects %d, started %v", conv.Reconnects(), conv.Started())
			}
			if ids := s.ids(); len(ids) != 2 || ids[0] != "" || ids[1] != "assigned" {
				t.Fatalf("session ids %q: the server's id should be kept", ids)
			}
			if len(conv.Unanswered()) != 0 || len(conv.ResumeTimes()) != 1 {
				t.Fatalf("unanswered %q, resume times %v", conv.Unanswered(), conv.ResumeTimes())
			}
			again, err := conv.Turn(ctx, "again")
			if err != nil || again.Text != "part" || again.End.GetReason() != pb.TurnEnd_REASON_COMPLETED {
				t.Fatalf("the next turn: %+v, %v", again, err)
			}
			finish(t, ctx, conv)
		})
	}
}

func TestOtherErrorsAreNotRetried(t *testing.T) {
	client, ctx := serve(t, &scripted{steps: []step{{"break", codes.InvalidArgument}}})
	conv, err := client.ResumingConverse(ctx, &pb.SessionConfig{SessionId: "s"}, antiphon.WithReconnect(fast))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conv.Turn(ctx, "hello"); statusOf(err) != codes.InvalidArgument {
		t.Fatalf("Turn: %v", err)
	}
	if conv.Reconnects() != 0 || statusOf(conv.Err()) != codes.InvalidArgument {
		t.Fatalf("reconnects %d, err %v", conv.Reconnects(), conv.Err())
	}
	if conv.Say("more") {
		t.Fatal("Say after the end should be refused")
	}
	if _, err := conv.Turn(ctx, "more"); statusOf(err) != codes.InvalidArgument {
		t.Fatalf("Turn after the end: %v, want the error that ended it", err)
	}
}

func TestASessionHeldElsewhereFailsAtOnceButIsWaitedForAfterABreak(t *testing.T) {
	held := step{"refuse", codes.FailedPrecondition}
	s := &scripted{steps: []step{held}}
	client, ctx := serve(t, s)
	if _, err := client.ResumingConverse(ctx, &pb.SessionConfig{SessionId: "s"}, antiphon.WithReconnect(fast)); statusOf(err) != codes.FailedPrecondition {
		t.Fatalf("opening a held session: %v", err)
	}
	// After a break the dead worker's lease holds until its heartbeat lapses: retried.
	s.steps = []step{{"break", codes.Unavailable}, held, held}
	conv, err := client.ResumingConverse(ctx, &pb.SessionConfig{SessionId: "s"}, antiphon.WithReconnect(fast))
	if err != nil {
		t.Fatal(err)
	}
	var lost *antiphon.TurnLostError
	if _, err := conv.Turn(ctx, "hello"); !errors.As(err, &lost) || lost.Reported {
		t.Fatalf("Turn: %v", err)
	}
	if ids := s.ids(); conv.Reconnects() != 1 || len(ids) != 5 {
		t.Fatalf("reconnects %d, session ids %q", conv.Reconnects(), ids)
	}
	finish(t, ctx, conv)
}

func TestResumingGivesUpAfterMaxAttempts(t *testing.T) {
	refused := step{"refuse", codes.Unavailable}
	client, ctx := serve(t, &scripted{steps: []step{{"break", codes.Unavailable}, refused, refused, refused}})
	policy := fast
	policy.MaxAttempts = 3
	conv, err := client.ResumingConverse(ctx, &pb.SessionConfig{SessionId: "s"}, antiphon.WithReconnect(policy))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conv.Turn(ctx, "hello"); statusOf(err) != codes.Unavailable {
		t.Fatalf("Turn: %v", err)
	}
	if conv.Reconnects() != 0 {
		t.Fatalf("reconnects %d", conv.Reconnects())
	}
}

func TestEndAfterAResumeEndsTheNewStream(t *testing.T) {
	client, ctx := serve(t, &scripted{steps: []step{{"break", codes.Unavailable}}})
	conv, err := client.ResumingConverse(ctx, &pb.SessionConfig{SessionId: "s"}, antiphon.WithReconnect(fast))
	if err != nil {
		t.Fatal(err)
	}
	conv.Say("hello")
	conv.End() // queued behind the text: the break comes after both were written
	seen := 0
	for {
		event, err := conv.Recv(ctx)
		if err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if event.GetSessionStarted() != nil {
			seen++
		}
	}
	if seen != 1 || conv.Reconnects() != 1 || conv.Err() != nil {
		t.Fatalf("session_started %d times, reconnects %d, err %v", seen, conv.Reconnects(), conv.Err())
	}
}
