package smtp

// relay patch: tests of the exact DATA reader (data.go).

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func readData(t testing.TB, wire string, bufSize int) (string, string, error) {
	br := bufio.NewReaderSize(strings.NewReader(wire), 16)
	r := &dataReader{r: br}
	var out bytes.Buffer
	buf := make([]byte, bufSize)
	for {
		n, err := r.Read(buf)
		out.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			rest, _ := io.ReadAll(br)
			return out.String(), string(rest), nil
		}
		if err != nil {
			return out.String(), "", err
		}
	}
}

func TestDataReaderExact(t *testing.T) {
	for _, tc := range []struct {
		name, wire, content, rest string
	}{
		{"plain", "a\r\nb\r\n.\r\nNEXT", "a\r\nb\r\n", "NEXT"},
		{"empty", ".\r\nNEXT", "", "NEXT"},
		{"empty lines", "\r\n\r\n.\r\n", "\r\n\r\n", ""},
		{"bare CR before end", "last\r\r\n.\r\nNEXT", "last\r\r\n", "NEXT"},
		{"CR CR CR LF", "x\r\r\r\n.\r\n", "x\r\r\r\n", ""},
		{"dot CR X", "a\r\n.\rX\r\n.\r\n", "a\r\n\rX\r\n", ""},
		{"dot CR CR LF", "a\r\n.\r\r\n.\r\n", "a\r\n\r\r\n", ""},
		{"dot CR at start", ".\rX\r\n.\r\n", "\rX\r\n", ""},
		{"stuffed dot", "..x\r\n..\r\n.\r\n", ".x\r\n.\r\n", ""},
		{"bare LF dot CRLF is content", "a\n.\r\nb\r\n.\r\n", "a\n.\r\nb\r\n", ""},
		{"CR dot CR LF is content", "a\r.\r\nb\r\n.\r\n", "a\r.\r\nb\r\n", ""},
		{"LF dot LF is content", "a\n.\nb\r\n.\r\n", "a\n.\nb\r\n", ""},
		{"dot LF", "a\r\n.\nb\r\n.\r\n", "a\r\n\nb\r\n", ""},
		{"NUL kept", "a\x00b\r\n.\r\n", "a\x00b\r\n", ""},
	} {
		for _, size := range []int{1, 2, 3, 7, 4096} {
			got, rest, err := readData(t, tc.wire, size)
			if err != nil {
				t.Fatalf("%s (buf %d): %v", tc.name, size, err)
			}
			if got != tc.content || rest != tc.rest {
				t.Errorf("%s (buf %d): got %q rest %q, want %q rest %q", tc.name, size, got, rest, tc.content, tc.rest)
			}
		}
	}
}

func TestDataReaderUnterminated(t *testing.T) {
	for _, wire := range []string{"hello\r\n.\r", "hello\r\n.", "hello\r\r", "x"} {
		if _, _, err := readData(t, wire, 4096); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%q: got %v, want io.ErrUnexpectedEOF", wire, err)
		}
	}
}

// stuff is what an SMTP client sends for content: a dot added to every line that
// starts with one, a CRLF added when the content does not end with one, then ".".
func stuff(content []byte) []byte {
	var w bytes.Buffer
	bol := true
	for i, c := range content {
		if bol && c == '.' {
			w.WriteByte('.')
		}
		w.WriteByte(c)
		bol = c == '\n' && i > 0 && content[i-1] == '\r'
	}
	if !bytes.HasSuffix(content, []byte("\r\n")) && len(content) > 0 {
		w.WriteString("\r\n")
	}
	w.WriteString(".\r\n")
	return w.Bytes()
}

func FuzzDataReaderRoundTrip(f *testing.F) {
	for _, s := range []string{"", "hello\r\n", "last\r", "x\r\r\n", ".\rX", "a\n.\n", "\r.\r\n", ".", "..\r\n.", "\r\n.\r\n"} {
		f.Add([]byte(s), uint8(5))
	}
	f.Fuzz(func(t *testing.T, content []byte, size uint8) {
		want := content
		if len(content) > 0 && !bytes.HasSuffix(content, []byte("\r\n")) {
			want = append(bytes.Clone(content), '\r', '\n')
		}
		got, rest, err := readData(t, string(stuff(content))+"NEXT", int(size)+1)
		if err != nil {
			t.Fatalf("%q: %v", content, err)
		}
		if got != string(want) || rest != "NEXT" {
			t.Fatalf("%q: got %q rest %q, want %q rest NEXT", content, got, rest, want)
		}
	})
}
