// A Benthos v4 binary with only the components bench_benthos uses: the
// amqp_0_9 input, the kafka / kafka_franz outputs and the pure
// (built-in) processors, caches and buffers. Built by bench/benthos.py into
// .stack/bin/benthos; the version is pinned in go.mod.
package main

import (
	"context"

	"github.com/benthosdev/benthos/v4/public/service"

	_ "github.com/benthosdev/benthos/v4/public/components/amqp09"
	_ "github.com/benthosdev/benthos/v4/public/components/io"
	_ "github.com/benthosdev/benthos/v4/public/components/kafka"
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
)

func main() {
	service.RunCLI(context.Background())
}
