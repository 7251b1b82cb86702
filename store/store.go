// Package store is berth's persistence interface: a small, transactional
// document store. Each record is a JSON document of one Kind, addressed by a
// Key the domain chooses (for example a lower-cased registration ID), with an
// optional secondary index value (Index) and a store-assigned ETag used for
// optimistic concurrency.
//
// Implementations (store/sqlite, store/postgres) must pass the conformance
// suite in store/storetest. A write that returns nil is durable: the caller
// may acknowledge it to a device.
package store

import (
	"context"
	"errors"
)

// Kind names a collection.
type Kind string

// The collections berth uses.
const (
	KindEnrollment   Kind = "enrollment"      // DPS individual enrollments, key = lower(registrationId)
	KindGroup        Kind = "enrollmentGroup" // DPS enrollment groups, key = lower(enrollmentGroupId)
	KindRegistration Kind = "registration"    // DPS registration records, key = lower(registrationId), index = lower(groupId)
	KindOperation    Kind = "operation"       // DPS registration operations, key = operationId, index = lower(registrationId)
	KindDevice       Kind = "device"          // hub device identities, key = hub + "/" + deviceId, index = hub
	KindConfig       Kind = "config"          // service settings (ID scope, policies), key = setting name
	KindCertificate  Kind = "certificate"     // DPS CA certificates, key = lower(name)
	KindTwin         Kind = "twin"            // hub device twins, key = hub + "/" + deviceId
	KindC2D          Kind = "c2d"             // hub cloud-to-device messages, key = hub + "/" + deviceId + "/" + order, index = hub + "/" + deviceId
	KindFeedback     Kind = "feedback"        // hub C2D feedback records, key = hub + "/" + order + "/" + deviceId, index = hub; and the locks of delivered batches, key = hub + "/~lock/" + token, index = "lock:" + hub
	KindHubRemoval   Kind = "hubRemoval"      // DPS: a reprovisioned device to delete from the hub it left, key = hub + "/" + deviceId, index = lower(registrationId)
	KindModule       Kind = "module"          // hub module identities, key = hub + "/" + deviceId + "/" + moduleId, index = hub + "/" + deviceId
	KindJob          Kind = "job"             // hub jobs (/jobs/v2), key = hub + "/" + jobId, index = "run" while the job is not finished, else ""
	KindJobDevice    Kind = "jobDevice"       // a hub job's per-device record (devices.jobs), key = hub + "/" + jobId + "/" + deviceId, index = hub + "/" + jobId
	KindImportExport Kind = "importExportJob" // hub import and export jobs (/jobs/create), key = hub + "/" + jobId, index = "run" while not finished
)

// Record is one stored document.
type Record struct {
	Kind  Kind
	Key   string
	Index string // secondary index value; "" when unused
	ETag  string // set by the store on every write; opaque
	Data  []byte // JSON document
	// Delete, in a record given to Apply, removes the record with this
	// Kind and Key instead of writing it (a missing one is no error;
	// Index and Data are ignored). It lets one transaction settle some
	// records and write others: C2D completions batched with feedback.
	// Every other method ignores it.
	Delete bool
}

// Cond is a write precondition.
type Cond struct {
	// IfMatch, when not empty, requires the current ETag to equal it ("*"
	// requires only that the record exists).
	IfMatch string
	// IfNotExists requires that no record with this key exists.
	IfNotExists bool
}

// ListOptions selects a page of records ordered by Key.
type ListOptions struct {
	Index string // when not empty, only records with this Index
	After string // exclusive lower bound on Key; "" starts at the beginning
	Limit int    // at most this many; <= 0 means no limit
}

// Errors every implementation returns (wrapped or bare; test with errors.Is).
var (
	ErrNotFound           = errors.New("store: not found")
	ErrPreconditionFailed = errors.New("store: precondition failed")
	ErrExists             = errors.New("store: already exists")
	// ErrUnavailable marks a failure to reach the store at all (a
	// database server that is down or unreachable), as opposed to one it
	// answered: front ends answer it with the protocol's retryable error
	// (HTTP 503, CONNACK 3), which every SDK retries. Only a store with a
	// server (PostgreSQL) returns it.
	ErrUnavailable error = unavailableError{}
)

type unavailableError struct{}

func (unavailableError) Error() string { return "store: unavailable" }

// Unavailable lets package azerr recognise the error without importing
// the store.
func (unavailableError) Unavailable() bool { return true }

// Store is the persistence interface.
type Store interface {
	// Get returns one record or ErrNotFound.
	Get(ctx context.Context, kind Kind, key string) (Record, error)
	// Put creates or replaces a record if cond holds and returns it with its
	// new ETag. IfMatch on a missing record fails with ErrNotFound;
	// IfNotExists on an existing one with ErrExists; an ETag mismatch with
	// ErrPreconditionFailed.
	Put(ctx context.Context, rec Record, cond Cond) (Record, error)
	// Delete removes a record if ifMatch is "" or "*" or equals its ETag.
	Delete(ctx context.Context, kind Kind, key, ifMatch string) error
	// List returns records of kind in Key order.
	List(ctx context.Context, kind Kind, opts ListOptions) ([]Record, error)
	// Count returns the number of records of kind (with Index, if not "").
	Count(ctx context.Context, kind Kind, index string) (int, error)
	// Apply writes all records unconditionally in one transaction: all or
	// none are durable when it returns. It returns them with their ETags.
	// A record with Delete set is removed instead (its result has no
	// ETag); writes and deletes apply in the order given.
	Apply(ctx context.Context, recs []Record) ([]Record, error)
	// Close releases the store.
	Close() error
}
