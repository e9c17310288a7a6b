// Starts a migration the way an operator does from the Temporal Web UI: a real Chromium (Debian's
// package, driven by playwright-core) fills in the "Start Workflow" form with the README's fields.
import { chromium, type Browser } from 'playwright-core';

export const CHROMIUM = process.env.FERRY_CHROMIUM ?? '/usr/bin/chromium';

/** As root and on a closed network: no sandbox, and no background calls home that would be refused. */
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

/**
 * Fills "Start a Workflow" (UI 2.42): Workflow ID from its "Random UUID" button, task queue,
 * workflow type and the JSON input, then starts it. Returns the workflow id the form generated.
 */
export async function startFromUi(browser: Browser, uiUrl: string, input: unknown): Promise<string> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  try {
    await page.goto(`${uiUrl}/namespaces/default/workflows/start-workflow`);
    await page.getByRole('button', { name: 'Random UUID' }).click();
    const workflowId = await page.getByTestId('workflowId').inputValue();
    await page.getByTestId('taskQueue').fill('ferry-control');
    await page.getByTestId('workflowType').fill('migrateInstance');
    await page.locator('.cm-content').click();
    await page.keyboard.insertText(JSON.stringify(input));
    // Leave the JSON editor first: a click on Start while it has the cursor does nothing.
    await page.getByRole('heading', { name: 'Start a Workflow' }).click();
    await page.getByTestId('start-workflow-button').click();
    return workflowId;
  } finally {
    // The form's own page is done once Start was clicked; the run is checked through Temporal.
    await page.waitForTimeout(1000);
    await page.close();
  }
}

/** A screenshot of a workflow's page in the UI. */
export async function screenshotWorkflow(browser: Browser, uiUrl: string, workflowId: string, file: string): Promise<void> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  try {
    await page.goto(`${uiUrl}/namespaces/default/workflows/${encodeURIComponent(workflowId)}`);
    await page.getByText(workflowId).first().waitFor({ timeout: 30_000 });
    await page.waitForTimeout(1500);
    await page.screenshot({ path: file, fullPage: true });
  } finally {
    await page.close();
  }
}
