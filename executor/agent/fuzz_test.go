package agent

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzReadFrame reads a frame from arbitrary bytes. It must never panic; a frame it returns is
// within maxFrame and is exactly what writeFrame writes for it, so it consumed the 5-byte header
// and the payload and nothing else.
func FuzzReadFrame(f *testing.F) {
	frame := func(typ byte, payload []byte) []byte {
		var b bytes.Buffer
		if err := writeFrame(&b, typ, payload); err != nil {
			f.Fatal(err)
		}
		return b.Bytes()
	}
	f.Add(frame(frameRun, []byte(`{"stage":"build_script","script":"#!/usr/bin/env bash\necho hi\n"}`)))
	f.Add(frame(framePing, nil))
	f.Add(frame(frameTerminate, nil))
	f.Add(frame(frameStdout, []byte("hello\n")))
	f.Add(frame(frameExit, []byte(`{"code":1,"error":"no bash"}`)))
	f.Add(append(frame(frameStdout, []byte("a")), frame(frameExit, []byte(`{"code":0}`))...))
	f.Add([]byte{'O', 0, 0, 0, 9, 'x'})        // short payload
	f.Add([]byte{'O', 0xff, 0xff, 0xff, 0xff}) // over the limit
	f.Add(binary.BigEndian.AppendUint32([]byte{'O'}, maxFrame+1))
	f.Add([]byte{'R', 0, 0}) // short header
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		typ, payload, err := readFrame(r)
		if err != nil {
			if payload != nil {
				t.Fatalf("readFrame returned a payload with error %v", err)
			}
			return
		}
		if len(payload) > maxFrame {
			t.Fatalf("frame of %d bytes passed the limit", len(payload))
		}
		var b bytes.Buffer
		if err := writeFrame(&b, typ, payload); err != nil {
			t.Fatal(err)
		}
		consumed := len(data) - r.Len()
		if !bytes.Equal(b.Bytes(), data[:consumed]) {
			t.Fatalf("frame read from %q writes back as %q", data[:consumed], b.Bytes())
		}
	})
}

// FuzzFrameRoundTrip writes a frame and reads it back: the type and payload come back identically,
// and the reader stops at the frame's end so a following frame is read intact.
func FuzzFrameRoundTrip(f *testing.F) {
	f.Add(byte(frameRun), []byte(`{"stage":"step_script","script":"echo"}`), []byte("next"))
	f.Add(byte(framePing), []byte{}, []byte{})
	f.Add(byte(frameStdout), []byte{0, 1, 2, 0xff}, []byte(`{"code":0}`))
	f.Add(byte(0), []byte(nil), []byte("x"))
	f.Fuzz(func(t *testing.T, typ byte, payload, next []byte) {
		var b bytes.Buffer
		if err := writeFrame(&b, typ, payload); err != nil {
			t.Fatal(err)
		}
		if err := writeFrame(&b, frameExit, next); err != nil {
			t.Fatal(err)
		}
		gotTyp, got, err := readFrame(&b)
		if err != nil {
			t.Fatal(err)
		}
		if gotTyp != typ || !bytes.Equal(got, payload) {
			t.Fatalf("wrote %q %q, read %q %q", typ, payload, gotTyp, got)
		}
		gotTyp, got, err = readFrame(&b)
		if err != nil || gotTyp != frameExit || !bytes.Equal(got, next) {
			t.Fatalf("second frame: read %q %q (%v), want %q %q", gotTyp, got, err, byte(frameExit), next)
		}
		if b.Len() != 0 {
			t.Fatalf("%d bytes left after both frames", b.Len())
		}
	})
}
