package hub

import (
	"log/slog"
	"time"

	"github.com/berth-iot/berth/store"
)

// Services is the hub domain as a front end sees it: one bundle of the
// services every transport (MQTT and HTTPS today, AMQP next) translates
// its wire into. A front end holds the bundle, never a service of its own
// making, so that a rule (a size limit, a stamp, one session per device,
// revocation) is the same whichever transport a device uses.
type Services struct {
	Registry      *Registry
	Links         *Links
	Telemetry     *Telemetry
	Twins         *Twins
	Methods       *Methods
	CloudToDevice *CloudToDevice
	// Feedback is the C2D delivery feedback CloudToDevice writes.
	Feedback *Feedback
	// Jobs schedules and runs twin-update and method jobs (/jobs/v2);
	// its Run must be running for them to run.
	Jobs *Jobs
	// ImportExport runs import and export jobs (/jobs/create) once its
	// blob containers are set (SetBlobs); its Run must be running.
	ImportExport *ImportExport
	// Configurations are the automatic device configurations; its Run
	// applies them (the server runs it).
	Configurations *Configurations
}

// NewServices builds the bundle on st around reg: sink receives telemetry
// (nil: telemetry is refused as not enabled), now is reg's clock (nil:
// time.Now). It also makes reg revoke live sessions through the bundle's
// Links.
func NewServices(st store.Store, reg *Registry, sink TelemetrySink, now func() time.Time, log *slog.Logger) *Services {
	if log == nil {
		log = slog.Default()
	}
	links := NewLinks()
	reg.SetLinks(links)
	c2d := NewCloudToDevice(st, reg, links, log.With("component", "c2d"))
	twins, methods := NewTwins(st, reg, links), NewMethods(reg, links)
	jobs := NewJobs(st, twins, methods, log.With("component", "jobs"))
	twins.deviceJobs = jobs.deviceJobSource
	configs := NewConfigurations(st, twins, log.With("component", "configurations"))
	twins.changed = configs.DeviceChanged
	reg.SetChangeHook(configs.DeviceChanged)
	return &Services{
		Registry:       reg,
		Links:          links,
		Telemetry:      NewTelemetry(sink, reg, now),
		Twins:          twins,
		Methods:        methods,
		CloudToDevice:  c2d,
		Feedback:       c2d.Feedback(),
		Jobs:           jobs,
		ImportExport:   NewImportExport(st, reg, twins, log.With("component", "importexport")),
		Configurations: configs,
	}
}
