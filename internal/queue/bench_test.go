package queue

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"relay/internal/deliver"
	"relay/internal/spool"
)

// accept is a Sender that takes every recipient at once.
var accept = senderFunc(func(_ context.Context, _ string, to []string, _ []byte) ([]deliver.RcptResult, error) {
	res := make([]deliver.RcptResult, len(to))
	for i, r := range to {
		res[i] = deliver.RcptResult{Rcpt: r, Code: 250}
	}
	return res, nil
})

func openBench(b *testing.B) *Queue {
	sp, rec, err := spool.Open(spool.Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	q, err := New(sp, rec, Options{Sender: accept, Bouncer: &bounces{}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close(); sp.Close() })
	return q
}

// BenchmarkSubmit measures the accept path through the queue, as the pipeline calls it:
// one 10 KB message made durable (spool.Put) and scheduled per op, from one client
// ("serial") or 10 per CPU ("parallel"). Nothing is delivered: Run is not started. The
// spool's BenchmarkSubmit measures Put alone, with its group-commit variants.
func BenchmarkSubmit(b *testing.B) {
	data := []byte("From: a@example.com\r\nSubject: bench\r\n\r\n" + strings.Repeat("x", 10*1024-40))
	for _, mode := range []string{"serial", "parallel"} {
		b.Run(mode, func(b *testing.B) {
			q := openBench(b)
			var n atomic.Int64
			submit := func() {
				id := fmt.Sprintf("b%d", n.Add(1))
				if err := q.Submit(context.Background(), id, "a@example.com", []string{"b@example.net"}, data); err != nil {
					b.Error(err)
				}
			}
			b.SetBytes(int64(len(data)))
			cpu0 := cpuTime()
			b.ResetTimer()
			if mode == "serial" {
				for b.Loop() {
					submit()
				}
			} else {
				b.SetParallelism(10)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						submit()
					}
				})
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e3, "cpu-µs/op")
		})
	}
}

// cpuTime is the process's user and system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkSubmitDeliver measures spooling and delivery together: 20 clients submit 10 KB
// messages while Run delivers them to a Sender that accepts everything at once; an op ends
// when its message is durable, and the benchmark when the spool is empty again.
func BenchmarkSubmitDeliver(b *testing.B) {
	data := []byte("From: a@example.com\r\nSubject: bench\r\n\r\n" + strings.Repeat("x", 10*1024-40))
	q := openBench(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	var n atomic.Int64
	b.SetBytes(int64(len(data)))
	cpu0 := cpuTime()
	b.ResetTimer()
	b.SetParallelism(10)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("d%d", n.Add(1))
			if err := q.Submit(context.Background(), id, "a@example.com", []string{"b@example.net"}, data); err != nil {
				b.Error(err)
			}
		}
	})
	for q.Stats().Depth > 0 {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e3, "cpu-µs/op")
}
