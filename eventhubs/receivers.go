package eventhubs

import (
	"errors"
	"fmt"
	"strings"
	"sync"
)

// Refusals of Receivers.Join.
var (
	// ErrEpoch: a receiver with a higher (or any, for a receiver without
	// one) epoch owns the partition. Event Hubs answers it as a stolen
	// link.
	ErrEpoch = errors.New("eventhubs: a receiver with a higher epoch owns the partition")
	// ErrTooMany: the partition already has MaxReceivers in the group.
	ErrTooMany = errors.New("eventhubs: too many receivers on the partition")
)

// Receivers tracks who reads each consumer group's partition, to apply
// Event Hubs' exclusivity rules: a receiver with an epoch (owner level)
// disconnects those with a lower or equal one and those without; a
// receiver with a lower epoch, or without one while an epoch receiver is
// there, is refused; at most MaxReceivers at once. It is safe for
// concurrent use. The zero value is ready.
type Receivers struct {
	mu sync.Mutex
	m  map[string][]*receiver
}

type receiver struct {
	epoch    int64
	hasEpoch bool
	kick     func(error)
}

// Join registers a receiver on a hub's consumer group and partition. epoch
// is nil for a receiver without one. kick is called (once, outside any
// lock) if a later receiver displaces this one; the caller then detaches
// the link with the error. leave unregisters the receiver.
func (r *Receivers) Join(hubName, group string, partition int, epoch *int64, kick func(error)) (leave func(), err error) {
	key := strings.ToLower(hubName) + "\x00" + strings.ToLower(group) + "\x00" + fmt.Sprint(partition)
	me := &receiver{kick: kick}
	if epoch != nil {
		me.epoch, me.hasEpoch = *epoch, true
	}
	r.mu.Lock()
	if r.m == nil {
		r.m = map[string][]*receiver{}
	}
	cur := r.m[key]
	var keep, kicked []*receiver
	for _, o := range cur {
		switch {
		case o.hasEpoch && (!me.hasEpoch || o.epoch > me.epoch):
			r.mu.Unlock()
			if me.hasEpoch {
				return nil, fmt.Errorf("%w: epoch %d is lower than the current %d", ErrEpoch, me.epoch, o.epoch)
			}
			return nil, fmt.Errorf("%w: a receiver with epoch %d reads it", ErrEpoch, o.epoch)
		case me.hasEpoch:
			kicked = append(kicked, o)
		default:
			keep = append(keep, o)
		}
	}
	if len(keep) >= MaxReceivers {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w: at most %d in a consumer group", ErrTooMany, MaxReceivers)
	}
	r.m[key] = append(keep, me)
	r.mu.Unlock()
	for _, o := range kicked {
		if me.hasEpoch && o.hasEpoch {
			o.kick(fmt.Errorf("%w: a receiver with epoch %d replaced this one (epoch %d)", ErrEpoch, me.epoch, o.epoch))
		} else {
			o.kick(fmt.Errorf("%w: a receiver with epoch %d replaced this one", ErrEpoch, me.epoch))
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			list := r.m[key]
			for i, o := range list {
				if o == me {
					list = append(list[:i:i], list[i+1:]...)
					break
				}
			}
			if len(list) == 0 {
				delete(r.m, key)
			} else {
				r.m[key] = list
			}
		})
	}, nil
}
