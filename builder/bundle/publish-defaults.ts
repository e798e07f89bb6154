/** Publish defaults, apart from publish-bundle.ts so the CLI can show them without loading the AWS SDK. */
export const defaultExpiresDays = 30;
