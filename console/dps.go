package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/policy"
)

func (c *Console) dpsRoutes(m *http.ServeMux) {
	m.HandleFunc("GET /enrollments", c.auth(c.enrollmentList))
	m.HandleFunc("GET /groups", c.auth(c.enrollmentList))
	m.HandleFunc("GET /enrollments/new", c.auth(c.enrollmentNew))
	m.HandleFunc("GET /groups/new", c.auth(c.enrollmentNew))
	m.HandleFunc("POST /enrollments", c.auth(c.enrollmentSave))
	m.HandleFunc("POST /groups", c.auth(c.enrollmentSave))
	m.HandleFunc("GET /enrollments/{id}", c.auth(c.enrollmentShow))
	m.HandleFunc("GET /groups/{id}", c.auth(c.enrollmentShow))
	m.HandleFunc("POST /enrollments/{id}", c.auth(c.enrollmentSave))
	m.HandleFunc("POST /groups/{id}", c.auth(c.enrollmentSave))
	m.HandleFunc("POST /enrollments/{id}/delete", c.auth(c.enrollmentDelete))
	m.HandleFunc("POST /groups/{id}/delete", c.auth(c.enrollmentDelete))
	m.HandleFunc("POST /enrollments/{id}/keys", c.auth(c.enrollmentKeys))
	m.HandleFunc("POST /groups/{id}/keys", c.auth(c.enrollmentKeys))
	m.HandleFunc("GET /registrations", c.auth(c.registrations))
	m.HandleFunc("GET /certificates", c.auth(c.certificates))
	m.HandleFunc("POST /certificates", c.auth(c.certificateUpload))
	m.HandleFunc("POST /certificates/{name}/verification-code", c.auth(c.certificateCode))
	m.HandleFunc("POST /certificates/{name}/verify", c.auth(c.certificateVerify))
	m.HandleFunc("POST /certificates/{name}/delete", c.auth(c.certificateDelete))
	m.HandleFunc("GET /hubs", c.auth(c.hubs))
}

// enrollment is an individual enrollment or a group, as the pages show it.
type enrollment struct {
	ID       string
	Group    bool
	DeviceID string
	State    *dps.RegistrationState
	dps.Common
}

func (e enrollment) Kind() string {
	if e.Group {
		return "groups"
	}
	return "enrollments"
}

func (e enrollment) AttestationType() string {
	if e.Attestation == nil {
		return ""
	}
	return e.Attestation.Type
}

func (e enrollment) Reprovision() dps.ReprovisionPolicy {
	if e.ReprovisionPolicy == nil {
		return dps.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true}
	}
	return *e.ReprovisionPolicy
}

func (e enrollment) TwinTags() string {
	if e.InitialTwin == nil {
		return ""
	}
	return funcs["rawjson"].(func(json.RawMessage) string)(e.InitialTwin.Tags)
}

func (e enrollment) TwinDesired() string {
	if e.InitialTwin == nil || e.InitialTwin.Properties == nil {
		return ""
	}
	return funcs["rawjson"].(func(json.RawMessage) string)(e.InitialTwin.Properties.Desired)
}

func isGroup(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/groups") }

func fromIndividual(e *dps.IndividualEnrollment) enrollment {
	return enrollment{ID: e.RegistrationID, DeviceID: e.DeviceID, State: e.RegistrationState, Common: e.Common}
}

func fromGroup(g *dps.EnrollmentGroup) enrollment {
	return enrollment{ID: g.EnrollmentGroupID, Group: true, Common: g.Common}
}

func (c *Console) listEnrollments(ctx context.Context, s *session, group bool) ([]enrollment, error) {
	var out []enrollment
	if group {
		gs, err := s.dps.ListEnrollmentGroups(ctx, 100, 1000)
		for _, g := range gs {
			out = append(out, fromGroup(g))
		}
		return out, err
	}
	es, err := s.dps.ListEnrollments(ctx, 100, 1000)
	for _, e := range es {
		out = append(out, fromIndividual(e))
	}
	return out, err
}

func (c *Console) getEnrollment(ctx context.Context, s *session, group bool, id string) (enrollment, error) {
	if group {
		g, err := s.dps.GetEnrollmentGroup(ctx, id)
		if err != nil {
			return enrollment{}, err
		}
		return fromGroup(g), nil
	}
	e, err := s.dps.GetEnrollment(ctx, id)
	if err != nil {
		return enrollment{}, err
	}
	return fromIndividual(e), nil
}

func title(group bool) (string, string) {
	if group {
		return "Enrollment groups", "groups"
	}
	return "Individual enrollments", "enrollments"
}

func (c *Console) enrollmentList(w http.ResponseWriter, r *http.Request, s *session) {
	group := isGroup(r)
	t, active := title(group)
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	list, err := c.listEnrollments(r.Context(), s, group)
	data := map[string]any{"Title": t, "Active": active, "Query": q, "Group": group, "Kind": active}
	if err != nil {
		data["Error"] = describe(err)
	}
	if q != "" {
		list = slices.DeleteFunc(list, func(e enrollment) bool {
			return !strings.Contains(strings.ToLower(e.ID), strings.ToLower(q))
		})
	}
	data["List"] = list
	c.render(w, r, http.StatusOK, "enrollments.html", s, data)
}

func (c *Console) enrollmentNew(w http.ResponseWriter, r *http.Request, s *session) {
	group := isGroup(r)
	t, active := title(group)
	e := enrollment{Group: group, Common: dps.Common{Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}, ProvisioningStatus: dps.ProvisioningEnabled}}
	c.render(w, r, http.StatusOK, "enrollment.html", s, map[string]any{"Title": "New: " + t, "Active": active, "E": e, "New": true, "Hubs": c.hubNames(r.Context(), s)})
}

func (c *Console) hubNames(ctx context.Context, s *session) []string {
	hs, err := s.dps.ListHubs(ctx)
	if err != nil {
		return nil
	}
	names := make([]string, len(hs))
	for i, h := range hs {
		names[i] = h.Name
	}
	return names
}

func (c *Console) enrollmentShow(w http.ResponseWriter, r *http.Request, s *session) {
	group := isGroup(r)
	t, active := title(group)
	e, err := c.getEnrollment(r.Context(), s, group, r.PathValue("id"))
	if err != nil {
		c.render(w, r, status(err), "error.html", s, map[string]any{"Title": t, "Active": active, "Error": describe(err)})
		return
	}
	data := map[string]any{"Title": e.ID, "Active": active, "E": e, "Hubs": c.hubNames(r.Context(), s), "Flash": r.URL.Query().Get("saved")}
	if group {
		regs, err := s.dps.ListRegistrations(r.Context(), e.ID, 100, 1000)
		if err != nil {
			data["RegError"] = describe(err)
		}
		data["Registrations"] = regs
	}
	c.render(w, r, http.StatusOK, "enrollment.html", s, data)
}

// applyForm sets what the form edits on e. The attestation changes only
// when a certificate is uploaded or a new enrollment is created.
func applyForm(r *http.Request, e *enrollment, create bool) error {
	f := r.PostForm
	if v := f.Get("provisioningStatus"); v == dps.ProvisioningEnabled || v == dps.ProvisioningDisabled {
		e.ProvisioningStatus = v
	}
	e.AllocationPolicy = f.Get("allocationPolicy")
	e.IoTHubs = nil
	for _, h := range f["iotHubs"] {
		if h = strings.TrimSpace(h); h != "" {
			e.IoTHubs = append(e.IoTHubs, h)
		}
	}
	if e.AllocationPolicy == "custom" {
		e.CustomAllocationDefinition = &dps.CustomAllocationDefinition{WebhookURL: strings.TrimSpace(f.Get("webhookUrl")), APIVersion: "2021-10-01"}
	} else {
		e.CustomAllocationDefinition = nil
	}
	e.ReprovisionPolicy = &dps.ReprovisionPolicy{UpdateHubAssignment: f.Get("updateHubAssignment") != "", MigrateDeviceData: f.Get("migrateDeviceData") != ""}
	tags, desired := strings.TrimSpace(f.Get("twinTags")), strings.TrimSpace(f.Get("twinDesired"))
	e.InitialTwin = nil
	if tags != "" || desired != "" {
		it := &dps.InitialTwin{}
		if tags != "" {
			if !json.Valid([]byte(tags)) {
				return errors.New("the initial twin's tags are not valid JSON")
			}
			it.Tags = json.RawMessage(tags)
		}
		if desired != "" {
			if !json.Valid([]byte(desired)) {
				return errors.New("the initial twin's desired properties are not valid JSON")
			}
			it.Properties = &dps.InitialTwinProperties{Desired: json.RawMessage(desired)}
		}
		e.InitialTwin = it
	}
	if !e.Group {
		e.DeviceID = strings.TrimSpace(f.Get("deviceId"))
	}
	cert := strings.TrimSpace(f.Get("certificate"))
	caRef := strings.TrimSpace(f.Get("caReference"))
	switch {
	case cert != "":
		x := &dps.X509Attestation{}
		certs := &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: cert}}
		if e.Group {
			x.SigningCertificates = certs
		} else {
			x.ClientCertificates = certs
		}
		e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationX509, X509: x}
	case caRef != "" && e.Group:
		e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationX509, X509: &dps.X509Attestation{CAReferences: &dps.X509CAReferences{Primary: caRef}}}
	case create:
		if f.Get("attestation") == dps.AttestationX509 {
			return errors.New("an X.509 enrollment needs a certificate (PEM) or, for a group, a verified CA certificate's name")
		}
		e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{}}
	}
	return nil
}

func (c *Console) put(ctx context.Context, s *session, e enrollment) (enrollment, error) {
	if e.Group {
		g, err := s.dps.PutEnrollmentGroup(ctx, &dps.EnrollmentGroup{EnrollmentGroupID: e.ID, Common: e.Common}, e.ETag)
		if err != nil {
			return e, err
		}
		return fromGroup(g), nil
	}
	out, err := s.dps.PutEnrollment(ctx, &dps.IndividualEnrollment{RegistrationID: e.ID, DeviceID: e.DeviceID, Common: e.Common}, e.ETag)
	if err != nil {
		return e, err
	}
	return fromIndividual(out), nil
}

// attestation is the enrollment's attestation with its keys, as a PUT
// must send it back unchanged.
func (c *Console) attestation(ctx context.Context, s *session, group bool, id string) (*dps.AttestationMechanism, error) {
	if group {
		return s.dps.EnrollmentGroupAttestation(ctx, id)
	}
	return s.dps.EnrollmentAttestation(ctx, id)
}

func (c *Console) enrollmentSave(w http.ResponseWriter, r *http.Request, s *session) {
	group := isGroup(r)
	t, active := title(group)
	ctx := r.Context()
	id := r.PathValue("id")
	create := id == ""
	var e enrollment
	var err error
	formErr := false
	if create {
		e = enrollment{ID: strings.TrimSpace(r.PostFormValue("id")), Group: group}
	} else {
		e, err = c.getEnrollment(ctx, s, group, id)
		if err == nil {
			e.Attestation, err = c.attestation(ctx, s, group, id)
		}
	}
	if err == nil {
		switch r.PostFormValue("action") {
		case "disable":
			e.ProvisioningStatus = dps.ProvisioningDisabled
		case "enable":
			e.ProvisioningStatus = dps.ProvisioningEnabled
		case "regenerate":
			if e.Attestation == nil || e.Attestation.SymmetricKey == nil {
				err = errors.New("only a symmetric-key enrollment has keys to regenerate")
			} else {
				e.Attestation.SymmetricKey = &dps.SymmetricKeyAttestation{PrimaryKey: policy.NewKey(), SecondaryKey: policy.NewKey()}
			}
		default:
			err = applyForm(r, &e, create)
			formErr = err != nil
		}
	}
	if err == nil {
		e, err = c.put(ctx, s, e)
	}
	if err != nil {
		data := map[string]any{"Title": t, "Active": active, "E": e, "New": create, "Error": describe(err), "Hubs": c.hubNames(ctx, s)}
		code := status(err)
		if code == http.StatusBadGateway && formErr {
			code = http.StatusBadRequest
		}
		c.render(w, r, code, "enrollment.html", s, data)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/%s/%s?saved=Saved.", active, e.ID), http.StatusSeeOther)
}

func (c *Console) enrollmentDelete(w http.ResponseWriter, r *http.Request, s *session) {
	group := isGroup(r)
	_, active := title(group)
	id := r.PathValue("id")
	var err error
	if group {
		err = s.dps.DeleteEnrollmentGroup(r.Context(), id, "")
	} else {
		err = s.dps.DeleteEnrollment(r.Context(), id, "")
	}
	if err != nil {
		c.render(w, r, status(err), "error.html", s, map[string]any{"Title": id, "Active": active, "Error": describe(err)})
		return
	}
	http.Redirect(w, r, "/"+active, http.StatusSeeOther)
}

// enrollmentKeys reveals an enrollment's keys: only on this POST, never in
// a URL, and only as far as the policy may read them.
func (c *Console) enrollmentKeys(w http.ResponseWriter, r *http.Request, s *session) {
	att, err := c.attestation(r.Context(), s, isGroup(r), r.PathValue("id"))
	if err != nil {
		c.fragment(w, http.StatusOK, "enrollment.html", "keys", map[string]any{"Error": describe(err)})
		return
	}
	c.fragment(w, http.StatusOK, "enrollment.html", "keys", map[string]any{"Keys": att.SymmetricKey, "X509": att.X509})
}

func (c *Console) registrations(w http.ResponseWriter, r *http.Request, s *session) {
	ctx := r.Context()
	data := map[string]any{"Title": "Registration records", "Active": "registrations"}
	type groupRegs struct {
		Group string
		Regs  []*dps.RegistrationState
		Error string
	}
	var all []groupRegs
	groups, err := s.dps.ListEnrollmentGroups(ctx, 100, 1000)
	if err != nil {
		data["Error"] = describe(err)
	}
	for _, g := range groups {
		regs, err := s.dps.ListRegistrations(ctx, g.EnrollmentGroupID, 100, 1000)
		gr := groupRegs{Group: g.EnrollmentGroupID, Regs: regs}
		if err != nil {
			gr.Error = describe(err)
		}
		all = append(all, gr)
	}
	data["Groups"] = all
	if ind, err := s.dps.ListEnrollments(ctx, 100, 1000); err == nil {
		var states []*dps.RegistrationState
		for _, e := range ind {
			if e.RegistrationState != nil {
				states = append(states, e.RegistrationState)
			}
		}
		data["Individual"] = states
	}
	c.render(w, r, http.StatusOK, "registrations.html", s, data)
}

func (c *Console) certificates(w http.ResponseWriter, r *http.Request, s *session) {
	c.renderCertificates(w, r, s, "", "", http.StatusOK)
}

func (c *Console) renderCertificates(w http.ResponseWriter, r *http.Request, s *session, flash, errMsg string, code int) {
	data := map[string]any{"Title": "Certificates", "Active": "certificates", "Flash": flash, "Error": errMsg}
	list, err := s.dps.ListCertificates(r.Context())
	if err != nil && errMsg == "" {
		data["Error"] = describe(err)
	}
	data["List"] = list
	c.render(w, r, code, "certificates.html", s, data)
}

func (c *Console) certificateUpload(w http.ResponseWriter, r *http.Request, s *session) {
	name := strings.TrimSpace(r.PostFormValue("name"))
	_, _, err := s.dps.PutCertificate(r.Context(), name, r.PostFormValue("pem"), "")
	if err != nil {
		c.renderCertificates(w, r, s, "", describe(err), status(err))
		return
	}
	http.Redirect(w, r, "/certificates", http.StatusSeeOther)
}

func (c *Console) certificateCode(w http.ResponseWriter, r *http.Request, s *session) {
	cert, err := s.dps.GenerateVerificationCode(r.Context(), r.PathValue("name"))
	if err != nil {
		c.renderCertificates(w, r, s, "", describe(err), status(err))
		return
	}
	c.renderCertificates(w, r, s, fmt.Sprintf("Verification code for %s: %s — sign a certificate with this subject CN using the CA's key and upload it below.", cert.Name, cert.Properties.VerificationCode), "", http.StatusOK)
}

func (c *Console) certificateVerify(w http.ResponseWriter, r *http.Request, s *session) {
	cert, err := s.dps.VerifyCertificate(r.Context(), r.PathValue("name"), r.PostFormValue("pem"))
	if err != nil {
		c.renderCertificates(w, r, s, "", describe(err), status(err))
		return
	}
	c.renderCertificates(w, r, s, cert.Name+" is verified.", "", http.StatusOK)
}

func (c *Console) certificateDelete(w http.ResponseWriter, r *http.Request, s *session) {
	if err := s.dps.DeleteCertificate(r.Context(), r.PathValue("name"), ""); err != nil {
		c.renderCertificates(w, r, s, "", describe(err), status(err))
		return
	}
	http.Redirect(w, r, "/certificates", http.StatusSeeOther)
}

func (c *Console) hubs(w http.ResponseWriter, r *http.Request, s *session) {
	data := map[string]any{"Title": "Linked IoT hubs", "Active": "hubs"}
	list, err := s.dps.ListHubs(r.Context())
	if err != nil {
		data["Error"] = describe(err)
	}
	data["List"] = list
	c.render(w, r, http.StatusOK, "hubs.html", s, data)
}
