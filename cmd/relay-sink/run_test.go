package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"
)

// TestSinkCounts runs the sink on 127.0.0.1:0, delivers 3 messages over one session,
// stops it with a real SIGTERM and checks the final count line (and, with -dir, the files).
func TestSinkCounts(t *testing.T) {
	for _, tc := range []struct {
		name string
		keep bool
	}{{"discard", false}, {"dir", true}} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"-addr", "127.0.0.1:0", "-quiet"}
			dir := t.TempDir()
			if tc.keep {
				args = append(args, "-dir", dir)
			}
			pr, pw := io.Pipe()
			var errb bytes.Buffer
			code := make(chan int, 1)
			go func() { code <- run(args, pw, &errb); pw.Close() }()

			out := bufio.NewReader(pr)
			first, err := out.ReadString('\n')
			require.NoError(t, err)
			addr, ok := strings.CutPrefix(strings.TrimSpace(first), "listening on ")
			require.True(t, ok, first)

			var msgs []string
			c, err := smtp.Dial(addr)
			require.NoError(t, err)
			for i := range 3 {
				msg := fmt.Sprintf("From: a@b.example\r\nSubject: %d\r\n\r\nbody %d\r\n", i, i)
				msgs = append(msgs, msg)
				require.NoError(t, c.SendMail("a@b.example", []string{"c@d.example"}, strings.NewReader(msg)))
			}
			require.NoError(t, c.Quit())

			// signal.NotifyContext in run catches it: the test process survives.
			require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGTERM))
			rest, err := io.ReadAll(out)
			require.NoError(t, err)
			require.Equal(t, 0, <-code, errb.String())
			total := 0
			for _, m := range msgs {
				total += len(m)
			}
			require.Regexp(t, fmt.Sprintf(`^count=3 bytes=%d last_ns=[1-9][0-9]+\n$`, total), string(rest))

			files, err := filepath.Glob(filepath.Join(dir, "*.eml"))
			require.NoError(t, err)
			if !tc.keep {
				require.Empty(t, files)
				return
			}
			var got []string
			for _, f := range files {
				b, err := os.ReadFile(f)
				require.NoError(t, err)
				got = append(got, string(b))
			}
			require.ElementsMatch(t, msgs, got)
		})
	}
}

func TestSinkUsage(t *testing.T) {
	for _, args := range [][]string{{"extra"}, {"-bogus"}} {
		var out, errb bytes.Buffer
		require.Equal(t, 2, run(args, &out, &errb), args)
		require.Empty(t, out.String())
	}
}
