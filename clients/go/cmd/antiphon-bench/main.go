// antiphon-bench measures this client's round trips against a running server and prints them as
// JSON (microseconds): a Send's first event (session_started), and one message on an open
// Converse stream to the event it causes (an empty text, answered at once with an error event).
// bench/bench_clients.py runs it beside the Python and TypeScript clients.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"time"

	"github.com/antiphon/antiphon/clients/go/antiphon"
	pb "github.com/antiphon/antiphon/clients/go/antiphonv1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server address")
	n := flag.Int("n", 300, "measured round trips of each kind (after a tenth as many warm-ups)")
	flag.Parse()
	client, err := antiphon.Dial(*addr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	warm := *n / 10
	send := make([]float64, 0, *n)
	for i := 0; i < warm+*n; i++ {
		cctx, cancel := context.WithCancel(ctx)
		t0 := time.Now()
		stream, err := client.Conversation.Send(cctx, &pb.TextRequest{Text: "Hello"})
		if err == nil {
			_, err = stream.Recv()
		}
		elapsed := time.Since(t0)
		cancel() // the first event is all this measures: the turn itself is abandoned
		if err != nil {
			log.Fatal(err)
		}
		if i >= warm {
			send = append(send, float64(elapsed.Microseconds()))
		}
	}
	conv, err := client.Converse(ctx, &pb.SessionConfig{})
	if err != nil {
		log.Fatal(err)
	}
	stream := make([]float64, 0, *n)
	for i := 0; i < warm+*n; i++ {
		t0 := time.Now()
		conv.Say(" ")
		if _, ok := <-conv.Events; !ok {
			log.Fatal(conv.Err())
		}
		if i >= warm {
			stream = append(stream, float64(time.Since(t0).Microseconds()))
		}
	}
	conv.End()
	for range conv.Events {
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string][]float64{"send_first_event_us": send, "converse_message_us": stream})
}
