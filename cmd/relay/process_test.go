package main

// Fault tests that run the real relay binary as a subprocess, as an operator would: the
// upstream refusing everything then recovering, kill -9 in the middle of a load, the
// spool becoming unwritable, and a recipient that bounces.

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/relaytest"
	"relay/internal/smtptest"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// relayBinary builds cmd/relay once per test run.
func relayBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "relay-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "relay")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return binPath
}

// proc is a relay process.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	log  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

var listenRE = regexp.MustCompile(`msg="relay started" listen=\[([0-9.:]+)`)

// startProc runs `relay serve -config path` and waits until it listens.
func startProc(t *testing.T, path string) *proc {
	t.Helper()
	p := &proc{t: t, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(relayBinary(t), "serve", "-config", path)
	stderr, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.log.Write([]byte(line + "\n"))
			if m := listenRE.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	go func() { p.cmd.Wait(); close(p.done) }()
	select {
	case p.addr = <-found:
	case <-p.done:
		t.Fatalf("relay exited at start:\n%s", p.log.String())
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("relay did not start:\n%s", p.log.String())
	}
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("relay did not stop on SIGTERM:\n%s", p.log.String())
	}
	require.Equal(p.t, 0, p.cmd.ProcessState.ExitCode(), p.log.String())
}

// procConfig writes a spool-mode configuration for a relay process relaying to up.
func procConfig(t *testing.T, up *smtptest.Sink, extra func(string) string) (path, spoolDir string) {
	t.Helper()
	dir := t.TempDir()
	spoolDir = filepath.Join(dir, "spool")
	text := relaytest.Config(up.Addr, "127.0.0.1:9", "spool", spoolDir)
	text = strings.Replace(text, "[spf]\nenabled = true", "[spf]\nenabled = false", 1)
	text = strings.Replace(text, "domain = \"example.net\"\n", "domain = \"example.net\"\ndelegation_check = false\n", 1)
	text = strings.Replace(text, "max_recipients = 5\n", "max_recipients = 5\ntimeout = \"30s\"\n", 1)
	if extra != nil {
		text = extra(text)
	}
	path = filepath.Join(dir, "relay.toml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	return path, spoolDir
}

// sendLoad sends n messages over c concurrent sessions, each with a unique X-Seq header, and
// returns the sequence numbers that got a 250. Sessions that fail stop; that is expected
// when the relay is killed under them.
func sendLoad(addr string, n, c int, progress *atomic.Int64) (acked []int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan int, n)
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, err := smtp.Dial(addr)
			if err != nil {
				return
			}
			defer cl.Close()
			if cl.Hello("load.test") != nil {
				return
			}
			for seq := range next {
				msg := fmt.Sprintf("X-Seq: %d\r\n", seq) + fmt.Sprintf(relaytest.MsgTmpl, "alice@gmail.com")
				reply, err := smtptest.SendOn(cl, "app@gmail.com", []string{"rcpt@dest.example"}, msg)
				if err != nil {
					return
				}
				if reply.Code == 250 {
					mu.Lock()
					acked = append(acked, seq)
					mu.Unlock()
					if progress != nil {
						progress.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	return acked
}

// seqs returns how many times each X-Seq arrived at the sink.
func seqs(msgs []smtptest.Message) map[string]int {
	got := map[string]int{}
	for _, m := range msgs {
		for _, v := range smtptest.Header(m.Data, "X-Seq") {
			got[v]++
		}
	}
	return got
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProcessUpstreamRefusesThenRecovers(t *testing.T) {
	up := smtptest.Start(t)
	up.OnMail(func(string) error {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	})
	path, spoolDir := procConfig(t, up, nil)
	p := startProc(t, path)

	acked := sendLoad(p.addr, 30, 5, nil)
	require.Len(t, acked, 30, "spool mode answers 250 while the upstream refuses")
	waitFor(t, "a failed attempt to be recorded", func() bool {
		out, _ := exec.Command(relayBinary(t), "queue", "-config", path, "list").CombinedOutput()
		return strings.Contains(string(out), "451")
	})
	require.Empty(t, up.Messages())
	entries, err := os.ReadDir(spoolDir)
	require.NoError(t, err)
	require.NotEmpty(t, entries)

	up.OnMail(nil)
	waitFor(t, "every message to be delivered", func() bool { return len(seqs(up.Messages())) == 30 })
	for s, n := range seqs(up.Messages()) {
		require.Equal(t, 1, n, "X-Seq %s delivered %d times", s, n)
	}
	waitFor(t, "the spool to empty", func() bool {
		out, _ := exec.Command(relayBinary(t), "queue", "-config", path, "list").CombinedOutput()
		return strings.Contains(string(out), "queue is empty")
	})
	p.stop()
}

func TestProcessKill9LosesNothing(t *testing.T) {
	up := smtptest.Start(t)
	path, _ := procConfig(t, up, nil)
	p := startProc(t, path)

	var acked []int
	var progress atomic.Int64
	done := make(chan struct{})
	go func() { acked = sendLoad(p.addr, 500, 50, &progress); close(done) }()
	// Kill the relay in the middle of the load.
	waitFor(t, "some messages to be accepted", func() bool { return progress.Load() >= 100 })
	p.kill()
	<-done
	require.NotEmpty(t, acked)
	require.Less(t, len(acked), 500, "the kill should have landed mid-load")

	p2 := startProc(t, path)
	waitFor(t, "every acknowledged message to be delivered", func() bool {
		got := seqs(up.Messages())
		for _, s := range acked {
			if got[fmt.Sprint(s)] == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("acked %d of 500 before kill -9; sink got %d messages (%d distinct)", len(acked), len(up.Messages()), len(seqs(up.Messages())))
	p2.stop()
}

func TestProcessRecipientBounces(t *testing.T) {
	up := smtptest.Start(t)
	up.Reject("nobody@dest.example", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	path, _ := procConfig(t, up, nil)
	p := startProc(t, path)

	reply, err := smtptest.Send(p.addr, "alice@example.com", []string{"ok@dest.example", "nobody@dest.example"}, fmt.Sprintf(relaytest.MsgTmpl, "alice@example.com"))
	require.NoError(t, err)
	require.Equal(t, 250, reply.Code)

	msgs := up.Wait(t, 2)
	var delivered, dsn *smtptest.Message
	for i := range msgs {
		switch {
		case msgs[i].From == "":
			dsn = &msgs[i]
		default:
			delivered = &msgs[i]
		}
	}
	require.NotNil(t, delivered)
	require.Equal(t, []string{"ok@dest.example"}, delivered.To)
	require.NotNil(t, dsn, "a DSN must come back with the null sender")
	require.Equal(t, []string{"alice@example.com"}, dsn.To)
	require.Contains(t, smtptest.Header(dsn.Data, "Content-Type")[0], "multipart/report")
	require.Contains(t, string(dsn.Data), "Final-Recipient: rfc822; nobody@dest.example")
	require.Contains(t, string(dsn.Data), "Status: 5.1.1")
	require.NotContains(t, string(dsn.Data), "Final-Recipient: rfc822; ok@dest.example")
	p.stop()
}

func TestProcessSpoolUnwritable(t *testing.T) {
	up := smtptest.Start(t)
	path, spoolDir := procConfig(t, up, nil)
	p := startProc(t, path)
	msg := fmt.Sprintf(relaytest.MsgTmpl, "alice@example.com")

	// The spool directory disappears under the relay (a full or broken disk looks the same
	// to it: writes fail): it must answer 451, never 250.
	moved := spoolDir + ".away"
	require.NoError(t, os.Rename(spoolDir, moved))
	require.NoError(t, os.WriteFile(spoolDir, []byte("not a directory"), 0o600))
	reply, err := smtptest.Send(p.addr, "alice@example.com", []string{"b@dest.example"}, msg)
	require.NoError(t, err)
	require.Equal(t, 451, reply.Code, reply.Message)
	require.Equal(t, smtp.EnhancedCode{4, 3, 0}, reply.EnhancedCode)

	require.NoError(t, os.Remove(spoolDir))
	require.NoError(t, os.Rename(moved, spoolDir))
	reply, err = smtptest.Send(p.addr, "alice@example.com", []string{"b@dest.example"}, msg)
	require.NoError(t, err)
	require.Equal(t, 250, reply.Code, reply.Message)
	up.Wait(t, 1)
	p.stop()
}

func TestProcessReload(t *testing.T) {
	up := smtptest.Start(t)
	path, _ := procConfig(t, up, nil)
	p := startProc(t, path)
	send := func() string {
		t.Helper()
		n := len(up.Messages())
		reply, err := smtptest.Send(p.addr, "app@partner.example", []string{"b@dest.example"}, fmt.Sprintf(relaytest.MsgTmpl, "bob@partner.example"))
		require.NoError(t, err)
		require.Equal(t, 250, reply.Code, reply.Message)
		return up.Wait(t, n+1)[n].From
	}
	require.Equal(t, "noreply@example.net", send(), "partner.example is not allowed yet")

	text, err := os.ReadFile(path)
	require.NoError(t, err)
	good := strings.Replace(string(text), `allowed_domains = ["example.com", "*.example.com"]`, `allowed_domains = ["example.com", "*.example.com", "partner.example"]`, 1)
	require.NoError(t, os.WriteFile(path, []byte(good), 0o600))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	waitFor(t, "the reload", func() bool { return strings.Contains(p.log.String(), "configuration reloaded") })
	require.Equal(t, "app@partner.example", send(), "the reloaded list applies")

	// An invalid file is refused and the running configuration stays.
	require.NoError(t, os.WriteFile(path, []byte(good+"\nbogus_key = 1\n"), 0o600))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	waitFor(t, "the refusal", func() bool { return strings.Contains(p.log.String(), "reload refused") })
	require.Contains(t, p.log.String(), "bogus_key")
	require.Equal(t, "app@partner.example", send())

	// Settings read only at start are named in a warning, not silently ignored.
	require.NoError(t, os.WriteFile(path, []byte(strings.Replace(good, "max_connections = 4", "max_connections = 3", 1)), 0o600))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	waitFor(t, "the restart warning", func() bool { return strings.Contains(p.log.String(), "only after a restart") })
	require.Contains(t, p.log.String(), "[upstream]")
	p.stop()
}

func TestProcessQueueCommands(t *testing.T) {
	up := smtptest.Start(t)
	up.OnMail(func(string) error {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	})
	path, _ := procConfig(t, up, func(s string) string {
		return strings.Replace(s, `retry_min = "50ms"`+"\n"+`retry_max = "200ms"`, `retry_min = "1h"`+"\n"+`retry_max = "2h"`, 1)
	})
	p := startProc(t, path)
	queue := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(relayBinary(t), append([]string{"queue", "-config", path}, args...)...).CombinedOutput()
		require.NoError(t, err, string(out))
		return string(out)
	}
	require.Len(t, sendLoad(p.addr, 2, 1, nil), 2)
	var ids []string
	waitFor(t, "two failed attempts", func() bool {
		out := queue("list")
		ids = regexp.MustCompile(`(?m)^([0-9a-v]{16}) .* 1 +in `).FindAllString(out, -1)
		return len(ids) == 2
	})
	id0, id1 := ids[0][:16], ids[1][:16]
	show := queue("show", id0)
	require.Contains(t, show, "pending:    rcpt@dest.example")
	require.Contains(t, show, "451")
	require.Contains(t, show, "X-Seq: ")

	require.Contains(t, queue("delete", id1), "deleted")
	require.NotContains(t, queue("list"), id1)

	// The next try is an hour away; `queue retry` makes it now.
	up.OnMail(nil)
	require.Contains(t, queue("retry"), "scheduled")
	up.Wait(t, 1)
	waitFor(t, "the spool to empty", func() bool { return strings.Contains(queue("list"), "queue is empty") })
	require.Len(t, up.Messages(), 1, "the deleted message is never delivered")

	out, err := exec.Command(relayBinary(t), "queue", "-config", path, "show", "zzzzzzzzzzzzzzzz").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "zzzzzzzzzzzzzzzz")
	p.stop()
}
