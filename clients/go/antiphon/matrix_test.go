package antiphon_test

// The client test matrix, run by tests/integration/test_client_matrix.py against real servers
// (ANTIPHON_ADDR, ANTIPHON_SECURED_ADDR + ANTIPHON_API_KEY, ANTIPHON_SPEECH_WAV + _WORDS).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/antiphon/antiphon/clients/go/antiphon"
	pb "github.com/antiphon/antiphon/clients/go/antiphonv1"
	"google.golang.org/grpc/codes"
)

const bound = 60 * time.Second

var pcm16k = &pb.AudioFormat{Encoding: pb.AudioEncoding_AUDIO_ENCODING_PCM16, SampleRateHz: 16000, Channels: 1}

// spoken: a short answer, chosen greedily, so a test that expects speech always gets words to speak.
var spoken = &pb.GenerationOptions{MaxTokens: 24, Greedy: true}

func env(t *testing.T, name string) string {
	value := os.Getenv(name)
	if value == "" {
		if os.Getenv("ANTIPHON_ADDR") == "" {
			t.Skip("run through pytest: tests/integration/test_client_matrix.py starts the servers")
		}
		t.Fatalf("%s is not set", name)
	}
	return value
}

func dial(t *testing.T, address string, opts ...antiphon.Option) (*antiphon.Client, context.Context) {
	client, err := antiphon.Dial(address, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	t.Cleanup(func() { cancel(); client.Close() })
	return client, ctx
}

func code(err error) codes.Code {
	var e *antiphon.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return codes.Unknown
}

func TestHealthIsServing(t *testing.T) {
	client, ctx := dial(t, env(t, "ANTIPHON_ADDR"))
	serving, err := client.Serving(ctx)
	if err != nil || !serving {
		t.Fatalf("serving=%v err=%v", serving, err)
	}
}

func TestSendStreamsDeltasAndEnds(t *testing.T) {
	client, ctx := dial(t, env(t, "ANTIPHON_ADDR"))
	events, err := client.Send(ctx, &pb.TextRequest{Text: "Hello"})
	if err != nil {
		t.Fatal(err)
	}
	deltas, reason := 0, pb.TurnEnd_REASON_UNSPECIFIED
	for {
		event, err := events.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if event.GetAgentText() != nil {
			deltas++
		}
		if end := event.GetTurnEnd(); end != nil {
			reason = end.Reason
		}
	}
	if deltas == 0 || (reason != pb.TurnEnd_REASON_COMPLETED && reason != pb.TurnEnd_REASON_MAX_TOKENS) {
		t.Fatalf("deltas=%d reason=%v", deltas, reason)
	}
}

func TestEmptyTextIsInvalidArgument(t *testing.T) {
	client, ctx := dial(t, env(t, "ANTIPHON_ADDR"))
	events, err := client.Send(ctx, &pb.TextRequest{Text: ""})
	if err == nil {
		_, err = events.Next()
	}
	if code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "text") {
		t.Fatalf("got %v", err)
	}
}

func TestConverseMustStartWithAConfig(t *testing.T) {
	client, ctx := dial(t, env(t, "ANTIPHON_ADDR"))
	stream, err := client.Conversation.Converse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&pb.ClientEvent{Event: &pb.ClientEvent_Text{Text: &pb.TextInput{Content: "hi"}}})
	_, err = stream.Recv()
	err = antiphon.AsError(err)
	if code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "session_config") {
		t.Fatalf("got %v", err)
	}
}

type turn struct {
	final, text string
	audioBytes  int
	reason      pb.TurnEnd_Reason
	events      []string // the kinds of event seen, in order, for a failure's message
}

func (got turn) String() string {
	return fmt.Sprintf("answer %q with %d bytes of audio, %v, events %v", got.text, got.audioBytes, got.reason, got.events)
}

// eventKind names a server event's oneof case, as the proto does ("agent_text").
func eventKind(event *pb.ServerEvent) string {
	return string(event.ProtoReflect().WhichOneof(event.ProtoReflect().Descriptor().Oneofs().ByName("event")).Name())
}

// collect reads events until the first turn_end.
func collect(t *testing.T, conv *antiphon.Conversation) turn {
	var got turn
	timeout := time.After(bound)
	for {
		select {
		case event, ok := <-conv.Events:
			if !ok {
				t.Fatalf("the stream ended before a turn_end: %v (%v)", conv.Err(), got)
			}
			if kind := eventKind(event); len(got.events) == 0 || got.events[len(got.events)-1] != kind {
				got.events = append(got.events, kind) // a run of one kind is listed once
			}
			if e := event.GetError(); e != nil {
				got.events = append(got.events, e.Message)
			}
			if tr := event.GetTranscript(); tr != nil && tr.IsFinal {
				got.final = tr.Text
			}
			if a := event.GetAgentText(); a != nil {
				got.text += a.Delta
			}
			if a := event.GetAudio(); a != nil {
				got.audioBytes += len(a.Data)
			}
			if end := event.GetTurnEnd(); end != nil {
				got.reason = end.Reason
				return got
			}
		case <-timeout:
			t.Fatalf("no turn_end within the bound (%v)", got)
		}
	}
}

func TestTextInAudioOut(t *testing.T) {
	client, ctx := dial(t, env(t, "ANTIPHON_ADDR"))
	conv, err := client.Converse(ctx, &pb.SessionConfig{InputAudio: pcm16k, OutputAudio: pcm16k, Generation: spoken})
	if err != nil {
		t.Fatal(err)
	}
	conv.Say("Hello")
	got := collect(t, conv)
	conv.End()
	for range conv.Events {
	}
	if got.audioBytes == 0 || got.text == "" {
		t.Fatalf("%v", got)
	}
	if err := conv.Err(); err != nil {
		t.Fatal(err)
	}
}

func readWav(t *testing.T, path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil || len(data) < 44 || string(data[:4]) != "RIFF" {
		t.Fatalf("not a WAV: %s (%v)", path, err)
	}
	return data[44:] // PCM16 mono 16 kHz after the canonical header
}

func TestAudioInAudioOut(t *testing.T) {
	client, ctx := dial(t, env(t, "ANTIPHON_ADDR"))
	pcm := readWav(t, env(t, "ANTIPHON_SPEECH_WAV"))
	conv, err := client.Converse(ctx, &pb.SessionConfig{InputAudio: pcm16k, Generation: spoken})
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 640 // 20 ms at 16 kHz
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		silence := make([]byte, chunk)
		for seq := uint64(1); ; seq++ {
			<-tick.C
			part := silence
			if off := int(seq-1) * chunk; off < len(pcm) {
				part = pcm[off:min(off+chunk, len(pcm))]
			}
			if !conv.Audio(part, seq) || ctx.Err() != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			default:
			}
		}
	}()
	got := collect(t, conv)
	conv.End()
	for range conv.Events {
	}
	words := regexp.MustCompile(`[a-z0-9']+`).FindAllString(strings.ToLower(got.final), -1)
	heard := strings.Join(words, " ")
	for _, word := range strings.Fields(env(t, "ANTIPHON_SPEECH_WORDS")) {
		if !strings.Contains(" "+heard+" ", " "+word+" ") {
			t.Fatalf("final transcript %q lacks %q (%v)", got.final, word, got)
		}
	}
	if got.audioBytes == 0 {
		t.Fatalf("no spoken answer: %v", got)
	}
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func TestCredentialsAndRateLimits(t *testing.T) {
	address := env(t, "ANTIPHON_SECURED_ADDR")
	anonymous, ctx := dial(t, address)
	if _, err := anonymous.Admin.ListModels(ctx, &pb.ListModelsRequest{}); code(antiphon.AsError(err)) != codes.Unauthenticated {
		t.Fatalf("without a key: %v", err)
	}
	keyed, ctx := dial(t, address, antiphon.WithAPIKey(env(t, "ANTIPHON_API_KEY")))
	if _, err := keyed.Admin.ListModels(ctx, &pb.ListModelsRequest{}); err != nil {
		t.Fatalf("with the key: %v", err)
	}
	for i := 0; i < 20; i++ {
		_, err := keyed.Admin.ListModels(ctx, &pb.ListModelsRequest{})
		if err == nil {
			continue
		}
		var e *antiphon.Error
		if !errors.As(antiphon.AsError(err), &e) || e.Code != codes.ResourceExhausted {
			t.Fatalf("expected RESOURCE_EXHAUSTED, got %v", err)
		}
		if e.RetryAfter <= 0 || !e.Retryable() {
			t.Fatalf("no readable retry delay: %+v", e)
		}
		return
	}
	t.Fatal("20 quick calls and no RESOURCE_EXHAUSTED")
}
