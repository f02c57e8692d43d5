package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// -retries sends a message refused with 4xx again; -outcomes has a line per attempt.
func TestRunRetriesAndOutcomes(t *testing.T) {
	k := startSink(t, 5) // every 5th MAIL: 451
	file := filepath.Join(t.TempDir(), "outcomes")
	var out, errb bytes.Buffer
	code := run([]string{"-addr", k.Addr, "-n", "20", "-c", "2", "-size", "1000", "-json",
		"-retries", "2", "-retry-wait", "0", "-outcomes", file}, &out, &errb)
	require.Equal(t, 0, code, errb.String())
	var r report
	require.NoError(t, json.Unmarshal(out.Bytes(), &r), out.String())
	require.Equal(t, 20, r.Sent)
	require.Equal(t, 20, r.OK)
	require.Equal(t, 24, r.Attempts, "20 accepted, every 5th of the 24 MAILs refused")
	require.Equal(t, map[string]int{"451": 4}, r.RetryErrors)
	require.Zero(t, r.Uncertain)
	require.Len(t, k.Messages(), 20)

	b, err := os.ReadFile(file)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	require.Len(t, lines, 24)
	ok := map[string]bool{}
	for _, l := range lines {
		f := strings.Fields(l)
		require.Len(t, f, 4, l)
		switch f[2] {
		case "ok":
			require.False(t, ok[f[0]], "accepted once: %s", l)
			ok[f[0]] = true
		case "refused":
			require.Equal(t, "451", f[3])
		default:
			t.Fatalf("unexpected outcome %q", l)
		}
	}
	require.Len(t, ok, 20)
}

// -source is the local address of every connection.
func TestRunSource(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	var mu sync.Mutex
	var peers []string
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			peers = append(peers, c.RemoteAddr().(*net.TCPAddr).IP.String())
			mu.Unlock()
			c.Close()
		}
	}()
	var out, errb bytes.Buffer
	require.Equal(t, 1, run([]string{"-addr", l.Addr().String(), "-n", "2", "-c", "1", "-source", "127.0.0.2"}, &out, &errb))
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"127.0.0.2", "127.0.0.2"}, peers)

	require.Equal(t, 2, run([]string{"-source", "nonsense"}, &out, &errb))
}

// A connection cut after the final dot is "unknown": the server may have taken the message.
func TestRunUncertain(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				c.Write([]byte("220 cut\r\n"))
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					switch {
					case strings.HasPrefix(line, "EHLO"):
						c.Write([]byte("250 cut\r\n"))
					case strings.HasPrefix(line, "DATA"):
						c.Write([]byte("354 go on\r\n"))
						for line != ".\r\n" {
							if line, err = r.ReadString('\n'); err != nil {
								return
							}
						}
						return // the message is complete; the reply never comes
					default:
						c.Write([]byte("250 ok\r\n"))
					}
				}
			}()
		}
	}()
	file := filepath.Join(t.TempDir(), "outcomes")
	var out, errb bytes.Buffer
	code := run([]string{"-addr", l.Addr().String(), "-n", "1", "-c", "1", "-json", "-retries", "1",
		"-retry-wait", "0", "-outcomes", file}, &out, &errb)
	require.Equal(t, 1, code)
	var r report
	require.NoError(t, json.Unmarshal(out.Bytes(), &r), out.String())
	require.Equal(t, 1, r.Failed)
	require.Equal(t, 2, r.Attempts)
	require.Equal(t, 1, r.Uncertain, "one message, however many uncertain attempts")
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Equal(t, "00000000 1 unknown conn\n00000000 2 unknown conn\n", string(b))
}
