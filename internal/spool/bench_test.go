package spool

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSubmit measures the accept path: one 10 KB message made durable per op (appended
// to the segment and fdatasynced). "serial" is one client; "parallel" runs 10 goroutines per
// CPU (-cpu 2: 20 clients) with the group commit and its commit delay, what Submit does;
// "parallel-no-delay" without the delay; "parallel-sync-each" gives every message its own
// fdatasync (batches of one), for comparison. cpu-µs/op is the process's CPU time per
// message (getrusage), which is what the delay saves. Nothing is delivered: Run is not
// started.
//
// Measured on the 2-core ext4 VM (README, "Performance"), -cpu 2, -benchtime 5000x, two runs:
//
//	                    msg/s          cpu-µs/op   messages per fdatasync
//	serial              3970-4200      95-100      1
//	parallel-sync-each  3990-4020      122         1
//	parallel-no-delay   36600-38100    15-16       10.4
//	parallel            13200-13500    11.5-11.7   19.9
//
// Grouping commits is what makes the log pay: the fdatasync is the cost, and it is shared.
// The delay trades a little latency (at most 2 ms) for fewer syncs, which here costs
// throughput (20 clients doing nothing but submit wait on it) and saves CPU; in the relay,
// which is bound by the CPU of its signatures at about 1500 msg/s, it raised the messages per
// sync from 1.35 to 3.9 and the throughput with them.
func BenchmarkSubmit(b *testing.B) {
	data := []byte("From: a@example.com\r\nSubject: bench\r\n\r\n" + strings.Repeat("x", 10*1024-40))
	for _, mode := range []string{"serial", "parallel-sync-each", "parallel-no-delay", "parallel"} {
		b.Run(mode, func(b *testing.B) {
			s, err := Open(Options{Dir: b.TempDir(), Sender: senderFunc(nil), Bounce: (&bounces{}).Bounce})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			switch mode {
			case "parallel-no-delay":
				s.w.delayMax = 0
			case "parallel-sync-each":
				s.w.delayMax = 0
				s.w.maxRecords = 1
			}
			var n atomic.Int64
			submit := func() {
				id := fmt.Sprintf("b%d", n.Add(1))
				if err := s.Submit(context.Background(), id, "a@example.com", []string{"b@example.net"}, data); err != nil {
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
			st := s.Stats()
			b.ReportMetric(float64(st.Records)/float64(max(st.Batches, 1)), "msgs/sync")
		})
	}
}

// cpuTime is the process's user and system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkSubmitDeliver measures the whole spool: 20 clients submit 10 KB messages
// while Run delivers them to a Sender that accepts everything at once; an op ends when its
// message is durable, and the benchmark when the spool is empty again.
func BenchmarkSubmitDeliver(b *testing.B) {
	data := []byte("From: a@example.com\r\nSubject: bench\r\n\r\n" + strings.Repeat("x", 10*1024-40))
	accept := senderFunc(func(_ context.Context, _ string, to []string, _ []byte) ([]RcptResult, error) {
		res := make([]RcptResult, len(to))
		for i, r := range to {
			res[i] = RcptResult{Rcpt: r, Code: 250}
		}
		return res, nil
	})
	s, err := Open(Options{Dir: b.TempDir(), Sender: accept, Bounce: (&bounces{}).Bounce})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	var n atomic.Int64
	b.SetBytes(int64(len(data)))
	b.SetParallelism(10)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("d%d", n.Add(1))
			if err := s.Submit(context.Background(), id, "a@example.com", []string{"b@example.net"}, data); err != nil {
				b.Error(err)
			}
		}
	})
	for s.Stats().Depth > 0 {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
}
