package antiphon_test

// The Go side of tests/integration/test_client_resume.py, which starts workers behind Envoy and sets
// ANTIPHON_RESUME_ADDR (Envoy), _SESSION (the session id), _READY and _GO (two file names): one turn,
// then READY is created and the test kills the worker holding the session; once the session has
// moved it creates GO, and the next turn must be answered on the resumed stream.

import (
	"io"
	"os"
	"testing"
	"time"

	"github.com/antiphon/antiphon/clients/go/antiphon"
	pb "github.com/antiphon/antiphon/clients/go/antiphonv1"
)

const goBound = 30 * time.Second

func waitForFile(t *testing.T, path string) {
	deadline := time.Now().Add(goBound)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %v", path, goBound)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func answered(t *testing.T, what string, result *antiphon.TurnResult, err error) {
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	reason := result.End.GetReason()
	if len(result.Errors) > 0 || (reason != pb.TurnEnd_REASON_COMPLETED && reason != pb.TurnEnd_REASON_MAX_TOKENS) {
		t.Fatalf("%s: %v, errors %v", what, reason, result.Errors)
	}
}

func TestResumeAfterKill(t *testing.T) {
	address := os.Getenv("ANTIPHON_RESUME_ADDR")
	if address == "" {
		t.Skip("run through pytest: tests/integration/test_client_resume.py starts the workers and Envoy")
	}
	session := os.Getenv("ANTIPHON_RESUME_SESSION")
	client, ctx := dial(t, address)
	config := &pb.SessionConfig{SessionId: session, Generation: &pb.GenerationOptions{MaxTokens: 8, Temperature: 0}}
	conv, err := client.ResumingConverse(ctx, config)
	if err != nil {
		t.Fatal(err)
	}
	defer conv.Cancel()
	if conv.SessionID() != session || conv.Started().GetHistoryTurns() != 0 {
		t.Fatalf("started %v", conv.Started())
	}
	first, err := conv.Turn(ctx, "Say hello.")
	answered(t, "the first turn", first, err)
	if err := os.WriteFile(os.Getenv("ANTIPHON_RESUME_READY"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitForFile(t, os.Getenv("ANTIPHON_RESUME_GO"))

	began := time.Now()
	second, err := conv.Turn(ctx, "Say hello again.")
	answered(t, "the turn after the kill", second, err)
	took := time.Since(began)
	started := conv.Started()
	if conv.Reconnects() != 1 || started.GetSessionId() != session || started.GetLostTurn() != "" {
		t.Fatalf("reconnects %d, started %v", conv.Reconnects(), started)
	}
	if started.GetHistoryTurns() != 2 { // the first turn (question and answer) survived
		t.Fatalf("the resumed session has %d earlier turns, want 2", started.GetHistoryTurns())
	}
	stored, err := client.Context.GetSession(ctx, &pb.GetSessionRequest{SessionId: session})
	if err != nil {
		t.Fatal(antiphon.AsError(err))
	}
	if turns := stored.GetTurns(); len(turns) != 4 || turns[0].GetContent() != "Say hello." || turns[2].GetContent() != "Say hello again." {
		t.Fatalf("stored turns %v", turns)
	}
	t.Logf("resumed in %v (break seen to the new session_started); the next turn took %v", conv.ResumeTimes()[0], took)
	conv.End()
	for {
		if _, err := conv.Recv(ctx); err == io.EOF {
			return
		} else if err != nil {
			t.Fatalf("the conversation ended with %v", err)
		}
	}
}
