package spool

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// BenchmarkSubmit measures the accept path: one 10 KB message made durable per op (appended
// to the segment and fdatasynced). "serial" is one client; "parallel" runs 10 goroutines per
// CPU (-cpu 2: 20 clients) with the group commit and its commit delay, what Put does;
// "parallel-no-delay" without the delay; "parallel-sync-each" gives every message its own
// fdatasync (batches of one), for comparison. cpu-µs/op is the process's CPU time per
// message (getrusage), which is what the delay saves. Nothing is delivered: no scheduler
// runs. Results: bench/RESULTS.md, "The spool's accept path".
func BenchmarkSubmit(b *testing.B) {
	data := []byte("From: a@example.com\r\nSubject: bench\r\n\r\n" + strings.Repeat("x", 10*1024-40))
	for _, mode := range []string{"serial", "parallel-sync-each", "parallel-no-delay", "parallel"} {
		b.Run(mode, func(b *testing.B) {
			s, _, err := Open(Options{Dir: b.TempDir()})
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
				if _, err := s.Put(context.Background(), id, "a@example.com", []string{"b@example.net"}, data); err != nil {
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
