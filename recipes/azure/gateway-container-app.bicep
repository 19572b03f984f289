// Aegress gateway as an Azure Container App in the customer's tenant.
//
//   az deployment group create -g RG -f recipes/azure/gateway-container-app.bicep \
//     -p environmentName=ENV keyVaultName=KV registryName=ACR image=ACR.azurecr.io/aegress@sha256:... \
//        controlPlaneUrl=https://control.example.com/v1/checkpoints
//
// Every secret is a Key Vault reference read by the app's own identity: no secret value is a
// parameter or appears in this file or in the deployment's history. recipes/azure/README.md lists the
// Key Vault secrets to create first and how to check the deployment.

@description('Name of the container app (also its host name prefix in the environment).')
@minLength(2)
@maxLength(32)
param name string = 'aegress-gateway'

@description('Region; defaults to the resource group\'s.')
param location string = resourceGroup().location

@description('An existing Container Apps managed environment in this resource group, integrated with the virtual network that reaches Postgres and Redis privately.')
param environmentName string

@description('An existing Key Vault (RBAC authorization) in this resource group holding the secrets listed in recipes/azure/README.md.')
param keyVaultName string

@description('An existing Azure Container Registry in this resource group that holds the image.')
param registryName string

@description('The gateway image, pinned by digest: <registry>.azurecr.io/aegress@sha256:<digest>.')
param image string

@description('Public host name clients use (a custom domain bound to the app); empty: the app\'s own <name>.<environment domain>.')
param publicHost string = ''

@description('HTTPS endpoint of the operator\'s control plane that receives every signed checkpoint.')
param controlPlaneUrl string

@description('Replicas kept running. Any replica serves any request of any session (docs/replicas.md); set the Redis URL so changes reach every replica at once and limits are shared.')
@minValue(1)
param minReplicas int = 1

@description('Most replicas the HTTP scale rule may start.')
@minValue(1)
param maxReplicas int = 3

@description('Concurrent HTTP requests per replica before another replica is started.')
param concurrentRequests int = 50

@description('Client address ranges (CIDR) allowed to reach the ingress; empty: any.')
param allowedClientRanges array = []

var host = empty(publicHost) ? '${name}.${environment.properties.defaultDomain}' : publicHost
var secretUrl = '${keyVault.properties.vaultUri}secrets/'
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' existing = {
  name: environmentName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

// The app's identity: reads its Key Vault secrets and pulls its image, nothing else.
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-identity'
  location: location
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, identity.id, keyVaultSecretsUser)
  scope: keyVault
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

resource imagePull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, identity.id, acrPull)
  scope: registry
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
  }
}

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: name
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  dependsOn: [
    secretsUser
    imagePull
  ]
  properties: {
    managedEnvironmentId: environment.id
    configuration: {
      activeRevisionsMode: 'Single'
      // HTTPS only (allowInsecure: false). The ingress forwards every path; the gateway serves
      // /mcp and /health (and /.well-known/*, /oauth/* once OAuth lands) and answers 404 to the rest.
      ingress: {
        external: true
        targetPort: 8765
        transport: 'http'
        allowInsecure: false
        ipSecurityRestrictions: [for (range, i) in allowedClientRanges: {
          name: 'client-${i}'
          action: 'Allow'
          ipAddressRange: range
        }]
      }
      registries: [
        {
          server: registry.properties.loginServer
          identity: identity.id
        }
      ]
      // Key Vault references only: the value never passes through this template.
      secrets: [
        {
          name: 'master-key'
          keyVaultUrl: '${secretUrl}aegress-master-key'
          identity: identity.id
        }
        {
          name: 'signing-key'
          keyVaultUrl: '${secretUrl}aegress-audit-signing-key'
          identity: identity.id
        }
        {
          name: 'database-url'
          keyVaultUrl: '${secretUrl}aegress-database-url'
          identity: identity.id
        }
        {
          name: 'redis-url'
          keyVaultUrl: '${secretUrl}aegress-redis-url'
          identity: identity.id
        }
        {
          name: 'control-plane-token'
          keyVaultUrl: '${secretUrl}aegress-control-plane-token'
          identity: identity.id
        }
      ]
    }
    template: {
      // preStop is not available here: the drain (20 s) plus the last writes fit in 45 s.
      terminationGracePeriodSeconds: 45
      containers: [
        {
          name: 'gateway'
          image: image
          args: [
            'serve'
            '--allow-public-bind'
            '--allowed-host'
            host
          ]
          env: [
            { name: 'AEGRESS_DATABASE_URL_FROM', value: 'DATABASE_URL' }
            // checkov:skip=CKV_SECRET_6:secretRef names a Container App secret (a Key Vault reference), not a value
            { name: 'DATABASE_URL', secretRef: 'database-url' }
            { name: 'AEGRESS_REDIS_URL', secretRef: 'redis-url' }
            { name: 'AEGRESS_MASTER_KEY_FILE', value: '/run/secrets/aegress/master.key' }
            { name: 'AEGRESS_SIGNING_KEY_FILE', value: '/run/secrets/aegress/audit-signing.key' }
            { name: 'AEGRESS_AUDIT_ORIGIN', value: host }
            // Evidence leaves the app only one way: each signed checkpoint to the operator's control plane.
            { name: 'AEGRESS_CHECKPOINT_HOOK', value: '/opt/aegress/bin/aegress-ship-checkpoint' }
            { name: 'AEGRESS_CONTROL_PLANE_URL', value: controlPlaneUrl }
            { name: 'AEGRESS_CONTROL_PLANE_TOKEN_FILE', value: '/run/secrets/aegress/control-plane.token' }
            // every connection arrives from the environment's ingress proxy
            { name: 'AEGRESS_MAX_CONNECTIONS_PER_ADDRESS', value: '1000' }
            { name: 'AEGRESS_DRAIN_GRACE', value: '20' }
          ]
          resources: {
            cpu: json('1.0')
            memory: '2Gi'
          }
          // /health is 503 while the store is unreachable or the gateway drains: it gates traffic
          // (startup, readiness) but never restarts a replica (liveness is the open port).
          probes: [
            {
              type: 'Startup'
              httpGet: { path: '/health', port: 8765 }
              periodSeconds: 2
              failureThreshold: 30
            }
            {
              type: 'Readiness'
              httpGet: { path: '/health', port: 8765 }
              periodSeconds: 5
              timeoutSeconds: 3
            }
            {
              type: 'Liveness'
              tcpSocket: { port: 8765 }
              periodSeconds: 10
              failureThreshold: 6
            }
          ]
          volumeMounts: [
            { volumeName: 'data', mountPath: '/var/lib/aegress' }
            { volumeName: 'tmp', mountPath: '/tmp' }
            { volumeName: 'keys', mountPath: '/run/secrets/aegress' }
          ]
        }
      ]
      // The data dir is scratch: everything that must last is in Postgres or in the mounted keys.
      volumes: [
        { name: 'data', storageType: 'EmptyDir' }
        { name: 'tmp', storageType: 'EmptyDir' }
        {
          name: 'keys'
          storageType: 'Secret'
          secrets: [
            { secretRef: 'master-key', path: 'master.key' }
            { secretRef: 'signing-key', path: 'audit-signing.key' }
            { secretRef: 'control-plane-token', path: 'control-plane.token' }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'http-concurrency'
            http: {
              metadata: {
                concurrentRequests: string(concurrentRequests)
              }
            }
          }
        ]
      }
    }
  }
}

@description('The MCP URL clients connect to.')
output mcpUrl string = 'https://${host}/mcp'

@description('Where to check readiness.')
output healthUrl string = 'https://${host}/health'

@description('The identity that reads the Key Vault secrets and pulls the image.')
output identityPrincipalId string = identity.properties.principalId
