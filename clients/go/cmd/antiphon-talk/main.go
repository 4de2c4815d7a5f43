// antiphon-talk streams a WAV file (16 kHz mono PCM16) to an Antiphon server at real-time pace,
// prints the transcripts and the agent's answer, and saves the spoken answer as a WAV.
//
//	antiphon-talk -addr 127.0.0.1:50051 -in question.wav -out answer.wav [-key ak_...]
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/antiphon/antiphon/clients/go/antiphon"
	pb "github.com/antiphon/antiphon/clients/go/antiphonv1"
)

const rate = 16000

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server address")
	in := flag.String("in", "", "16 kHz mono PCM16 WAV to speak")
	out := flag.String("out", "answer.wav", "where to save the spoken answer")
	key := flag.String("key", os.Getenv("ANTIPHON_API_KEY"), "API key (or ANTIPHON_API_KEY)")
	flag.Parse()
	data, err := os.ReadFile(*in)
	if err != nil || len(data) < 44 || string(data[:4]) != "RIFF" {
		log.Fatalf("-in: a 16 kHz mono PCM16 WAV is needed (%v)", err)
	}
	var opts []antiphon.Option
	if *key != "" {
		opts = append(opts, antiphon.WithAPIKey(*key))
	}
	client, err := antiphon.Dial(*addr, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	format := &pb.AudioFormat{Encoding: pb.AudioEncoding_AUDIO_ENCODING_PCM16, SampleRateHz: rate, Channels: 1}
	conv, err := client.Converse(ctx, &pb.SessionConfig{InputAudio: format})
	if err != nil {
		log.Fatal(err)
	}
	go stream(conv, data[44:])
	var answer []byte
	for event := range conv.Events {
		switch e := event.Event.(type) {
		case *pb.ServerEvent_Transcript:
			if e.Transcript.IsFinal {
				fmt.Printf("you: %s\n", e.Transcript.Text)
			}
		case *pb.ServerEvent_AgentText:
			fmt.Print(e.AgentText.Delta)
		case *pb.ServerEvent_Audio:
			answer = append(answer, e.Audio.Data...)
		case *pb.ServerEvent_TurnEnd:
			fmt.Printf("\n[%s, voice-to-voice %.0f ms]\n", e.TurnEnd.Reason, e.TurnEnd.GetLatency().GetVoiceToVoiceMs())
			conv.End() // one question, one answer: the stream closes once it is spoken
		}
	}
	if err := conv.Err(); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, wav(answer), 0o644); err != nil {
		log.Fatal(err)
	}
}

// stream sends 20 ms chunks in real time, then silence (so the utterance's end is found) until the input ends.
func stream(conv *antiphon.Conversation, pcm []byte) {
	const chunk = rate / 50 * 2
	silence := make([]byte, chunk)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for seq, off := uint64(1), 0; ; seq, off = seq+1, off+chunk {
		<-tick.C
		part := silence
		if off < len(pcm) {
			end := off + chunk
			if end > len(pcm) {
				end = len(pcm)
			}
			part = pcm[off:end]
		}
		if !conv.Audio(part, seq) {
			return // the input was ended
		}
	}
}

func wav(pcm []byte) []byte {
	header := make([]byte, 44)
	copy(header[0:], "RIFF")
	binary.LittleEndian.PutUint32(header[4:], uint32(36+len(pcm)))
	copy(header[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(header[16:], 16)
	binary.LittleEndian.PutUint16(header[20:], 1)
	binary.LittleEndian.PutUint16(header[22:], 1)
	binary.LittleEndian.PutUint32(header[24:], rate)
	binary.LittleEndian.PutUint32(header[28:], rate*2)
	binary.LittleEndian.PutUint16(header[32:], 2)
	binary.LittleEndian.PutUint16(header[34:], 16)
	copy(header[36:], "data")
	binary.LittleEndian.PutUint32(header[40:], uint32(len(pcm)))
	return append(header, pcm...)
}
