// Command berth is a self-hosted Azure IoT DPS and IoT hub. All of its
// logic lives in the packages; main only wires signals to the command line.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/berth-iot/berth/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
