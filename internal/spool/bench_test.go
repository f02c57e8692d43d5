package spool

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

// BenchmarkSubmit measures the accept path: one 10 KB message made durable per op, with
// 10 goroutines per CPU submitting at once (run with -cpu 1,2 for 10 and 20 clients).
// Nothing is delivered: Run is not started.
func BenchmarkSubmit(b *testing.B) {
	data := []byte("From: a@example.com\r\nSubject: bench\r\n\r\n" + strings.Repeat("x", 10*1024-40))
	for _, mode := range []string{"serial", "parallel", "parallel-group"} {
		b.Run(mode, func(b *testing.B) {
			s, err := Open(Options{Dir: b.TempDir(), Sender: senderFunc(nil), Bounce: (&bounces{}).Bounce})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if mode == "parallel-group" {
				s.group = newGroupSync(s.dir)
			}
			var n atomic.Int64
			submit := func() {
				id := fmt.Sprintf("b%d", n.Add(1))
				if err := s.Submit(context.Background(), id, "a@example.com", []string{"b@example.net"}, data); err != nil {
					b.Error(err)
				}
			}
			b.SetBytes(int64(len(data)))
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
		})
	}
}
