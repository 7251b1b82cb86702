//go:build race

package mqtt

// raceEnabled: the race detector multiplies memory use, so memory budgets
// are not checked under it.
const raceEnabled = true
