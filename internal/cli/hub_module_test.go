package cli

import "testing"

const hubModuleJSON = `{"moduleId":"m1","managedBy":"","deviceId":"d1","generationId":"638000000000000000","etag":"AAAAAAAAAAE=",` +
	`"connectionState":"Disconnected","connectionStateUpdatedTime":"0001-01-01T00:00:00Z","lastActivityTime":"0001-01-01T00:00:00Z",` +
	`"cloudToDeviceMessageCount":0,"authentication":{"symmetricKey":{"primaryKey":"` + devPrimary + `","secondaryKey":"` + devSecondary + `"},"type":"sas"}}`

func TestHubModuleCommands(t *testing.T) {
	clearHubEnv(t)
	ok := reply{status: 200, body: hubModuleJSON}
	runHubCases(t, []string{"module-identity"}, []hubCase{
		{
			name:     "create with generated keys",
			args:     []string{"create", "-d", "d1", "-m", "m1"},
			replies:  []reply{ok},
			wantReqs: []string{`PUT /devices/d1/modules/m1 {"deviceId":"d1","moduleId":"m1"}`},
			wantOut:  hubModuleJSON,
		},
		{
			name:     "update keeps keys, If-Match *",
			args:     []string{"update", "-d", "d1", "-m", "m1", "--managed-by", "ops"},
			replies:  []reply{ok},
			wantReqs: []string{`PUT /devices/d1/modules/m1 if-match="*" {"deviceId":"d1","moduleId":"m1","managedBy":"ops"}`},
			wantOut:  hubModuleJSON,
		},
		{
			name:     "show",
			args:     []string{"show", "-d", "d1", "-m", "m1"},
			replies:  []reply{ok},
			wantReqs: []string{"GET /devices/d1/modules/m1"},
			wantOut:  hubModuleJSON,
		},
		{
			name:     "list",
			args:     []string{"list", "-d", "d1"},
			replies:  []reply{{status: 200, body: "[" + hubModuleJSON + "]"}},
			wantReqs: []string{"GET /devices/d1/modules"},
			wantOut:  "[" + hubModuleJSON + "]",
		},
		{
			name:     "delete",
			args:     []string{"delete", "-d", "d1", "-m", "m1"},
			replies:  []reply{{status: 204}},
			wantReqs: []string{"DELETE /devices/d1/modules/m1"},
			wantOut:  "-",
		},
		{name: "needs a module", args: []string{"show", "-d", "d1"}, wantErr: "--module-id"},
		{name: "needs a device", args: []string{"show", "-m", "m1"}, wantErr: "--device-id"},
	})
	runHubCases(t, []string{"module-twin"}, []hubCase{
		{
			name:     "show",
			args:     []string{"show", "-d", "d1", "-m", "m1"},
			replies:  []reply{{status: 200, body: hubTwinJSON}},
			wantReqs: []string{"GET /twins/d1/modules/m1"},
			wantOut:  hubTwinJSON,
		},
		{
			name:     "update",
			args:     []string{"update", "-d", "d1", "-m", "m1", "--desired", `{"rate":5}`},
			replies:  []reply{{status: 200, body: hubTwinJSON}},
			wantReqs: []string{`PATCH /twins/d1/modules/m1 {"properties":{"desired":{"rate":5}}}`},
			wantOut:  hubTwinJSON,
		},
	})
}
