// Command relay-load measures an SMTP server: it sends N messages of S bytes over C
// concurrent sessions, each session reused from message to message, and reports messages per
// second, errors by reply code and the latency of each message from MAIL FROM to the reply
// to its final dot.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
