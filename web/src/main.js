// Entry point: styles (bundled into app-<hash>.css) and the page.
import "./styles/main.css";
import { start } from "./app.js";

start();
