//go:build race

package amqp

// raceEnabled: the race detector multiplies memory use, so memory budgets
// are not checked under it.
const raceEnabled = true
