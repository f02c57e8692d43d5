// Command relay-sink is a counting SMTP server for load tests: it accepts every message,
// counts it and discards it (or writes it into -dir), and prints the count, so that a load
// script can tell when the last message relayed to it has arrived, and when.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
